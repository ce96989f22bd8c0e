"""The one exception tree of jit-bastion.

    BastionError                  base; never raised itself
    ├── ConfigError               a bad config file or state directory
    ├── InputError                bad input from a person or an API client
    │   └── NotFound              a named thing that does not exist
    ├── Refused                   a policy said no (HTTP 403)
    │   └── AuthFailed            a login failed; says nothing about why
    ├── Unavailable               a backend did not answer (HTTP 503)
    │   └── ProxmoxError          the Proxmox API answered with an error
    └── AuditError                the audit trail is broken or unwritable

Each class carries the HTTP status the web UI answers with, so that a
handler never has to guess.
"""


class BastionError(Exception):
    """Base of every error jit-bastion raises on purpose."""

    http_status = 500
    code = "internal"


class ConfigError(BastionError):
    """The configuration or the state directory is unusable."""

    code = "config"


class InputError(BastionError):
    """Input from outside is malformed; the message says how to fix it."""

    http_status = 400
    code = "bad_input"


class NotFound(InputError):
    """A user, target, request or certificate does not exist."""

    http_status = 404
    code = "not_found"


class Refused(BastionError):
    """Policy refuses the action; the message names the rule."""

    http_status = 403
    code = "refused"


class AuthFailed(Refused):
    """A login failed. The message never says which factor was wrong."""

    http_status = 401
    code = "auth_failed"

    def __init__(self, message: str = "Login failed.") -> None:
        super().__init__(message)


class Unavailable(BastionError):
    """A backend such as the Proxmox API or a target did not answer."""

    http_status = 503
    code = "unavailable"


class ProxmoxError(Unavailable):
    """The Proxmox API refused or failed a call."""

    code = "proxmox"


class AuditError(BastionError):
    """The audit trail cannot be written or does not verify."""

    code = "audit"
