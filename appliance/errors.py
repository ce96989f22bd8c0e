"""The one exception tree of jit-bastion.

    BastionError                  base; never raised itself
    ├── ConfigError               a bad config file or state directory
    ├── InputError                bad input from a person or an API client
    │   ├── NotFound              a named thing that does not exist
    │   └── AmbiguousName         a bare guest name that several guests share
    ├── Refused                   a policy said no (HTTP 403)
    │   └── AuthFailed            a login failed; says nothing about why
    ├── Unavailable               a backend did not answer (HTTP 503)
    │   ├── NoIPv4Address         a guest reports no usable IPv4 address
    │   ├── GuestNotReady         started, but SSH did not answer in time
    │   └── ProxmoxError          the Proxmox API answered with an error
    │       ├── APIError          an HTTP error from the API
    │       │   ├── TokenRejected     401: wrong token id or secret
    │       │   └── PrivilegeMissing  403: the token lacks a privilege
    │       ├── NodeOffline       595, or no answer within the timeout
    │       ├── TLSFailure        the API's certificate did not verify
    │       ├── APIUnreachable    nothing listens at the URL
    │       ├── GuestAgentNotRunning  QEMU guest agent down, no ipconfig
    │       ├── StartFailed       a start task ended with an error
    │       └── StartStillRunning a start task outlived the bound
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


class AmbiguousName(InputError):
    """A bare name that several guests share; use ``name.node`` or the id."""


class NoIPv4Address(Unavailable):
    """The guest reports no IPv4 address that the bastion could reach."""


class GuestNotReady(Unavailable):
    """The guest runs, but no address or no SSH answer came within the bound."""


class ProxmoxError(Unavailable):
    """The Proxmox API refused or failed a call."""

    code = "proxmox"


class APIError(ProxmoxError):
    """The API answered with an HTTP error; ``status`` and ``reason`` say which."""

    def __init__(self, message: str, status: int, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class TokenRejected(APIError):
    """The API refused the token (401): its id or its secret is wrong."""


class PrivilegeMissing(APIError):
    """The token lacks a privilege (403); ``privilege`` names it."""

    def __init__(self, message: str, reason: str, privilege: str, path: str) -> None:
        super().__init__(message, 403, reason)
        self.privilege = privilege
        self.path = path


class NodeOffline(ProxmoxError):
    """A node did not answer: HTTP 595 from the cluster, or a timeout.

    Its message starts with "node offline", which is what a person sees.
    """

    def __init__(self, message: str, node: str = "") -> None:
        super().__init__(message)
        self.node = node


class TLSFailure(ProxmoxError):
    """The API's TLS certificate did not verify against the configured CA."""


class APIUnreachable(ProxmoxError):
    """No API answers at the configured URL (refused, or no such host)."""


class GuestAgentNotRunning(ProxmoxError):
    """The QEMU guest agent does not answer and no ipconfig names an address."""


class StartFailed(ProxmoxError):
    """The start task ended with an error; ``exitstatus`` is what PVE said."""

    def __init__(self, message: str, upid: str, exitstatus: str) -> None:
        super().__init__(message)
        self.upid = upid
        self.exitstatus = exitstatus


class StartStillRunning(ProxmoxError):
    """The start task was still running at the bound; ``upid`` names it."""

    def __init__(self, message: str, upid: str) -> None:
        super().__init__(message)
        self.upid = upid


class AuditError(BastionError):
    """The audit trail cannot be written or does not verify."""

    code = "audit"
