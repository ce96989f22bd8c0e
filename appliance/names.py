"""The shapes a login name and a target name may take.

Both end up in certificates, ssh_config blocks, shell commands and
pages, so they are held to narrow patterns at the door instead of being
escaped everywhere later.
"""

from __future__ import annotations

import re

from .errors import InputError

#: A POSIX-style login: what OpenSSH's sshd and useradd accept, minus
#: the pattern characters ``* ? ! ,`` and anything outside ASCII.
LOGIN = re.compile(r"[a-z_][a-z0-9_-]{0,31}")

#: A target name: a DNS label or dotted name (``web01``, ``web01.pve2``).
TARGET = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")


def is_login_name(name: str) -> bool:
    """Return whether ``name`` is an acceptable login name."""
    return LOGIN.fullmatch(name) is not None


def check_login_name(name: str) -> str:
    """Return ``name`` when it is a valid login name, else raise."""
    if not is_login_name(name):
        raise InputError(
            f"{name!r} is not a valid user name: use 1 to 32 lower-case "
            "letters, digits, '_' or '-', starting with a letter or '_'"
        )

    return name


def check_target_name(name: str) -> str:
    """Return ``name`` when it is a valid target name, else raise."""
    if TARGET.fullmatch(name) is None:
        raise InputError(
            f"{name!r} is not a valid target name: use letters, digits, "
            "'.', '_' and '-', up to 128 characters"
        )

    return name
