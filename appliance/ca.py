"""The certificate authority: the only place a certificate is made.

Two Ed25519 keys live in ``<state>/ca``: the user CA, which signs the
short-lived certificates people log in with, and the host CA, which
signs the bastion's own host key so that clients trust it with one
``@cert-authority`` line. Every certificate made here sets every field
explicitly, because asyncssh's defaults mean "forever, any user, every
permit".
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from .errors import ConfigError

logger = logging.getLogger(__name__)

#: How far in the past ``valid_after`` is set, for clients whose clock lags.
BACKDATE = 60

#: Lifetime of the bastion's host certificate; renewed at each start
#: when less than a quarter of it is left.
HOST_CERTIFICATE_LIFETIME = 365 * 86400


@dataclass(frozen=True)
class UserCertificateSpec:
    """Everything a user certificate says, chosen by policy."""

    serial: int
    key_id: str
    principals: tuple[str, ...]
    ttl: int
    source_addresses: tuple[str, ...] = ()


def write_private_key(key: asyncssh.SSHKey, path: Path) -> None:
    """Write ``key`` in OpenSSH format, mode 0600 whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key.export_private_key())
    os.chmod(path, 0o600)
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key())


def read_private_key(path: Path) -> asyncssh.SSHKey:
    """Read a private key, refusing one that others may read."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is missing: run 'jit-bastion init' to create it"
        ) from None
    if mode & 0o077:
        raise ConfigError(
            f"{path} has mode {mode:04o}; a private key must be 0600: "
            f"run chmod 600 {path}"
        )

    return asyncssh.read_private_key(path)


class CertificateAuthority:
    """Signs user certificates and the bastion's host certificate."""

    def __init__(self, user_key: asyncssh.SSHKey, host_key: asyncssh.SSHKey):
        self._user_key = user_key
        self._host_key = host_key

    def __repr__(self) -> str:
        return f"<CertificateAuthority user={self.user_fingerprint}>"

    @staticmethod
    def paths(state: Path) -> tuple[Path, Path]:
        """Return the paths of the user CA and host CA private keys."""
        return state / "ca" / "user_ca", state / "ca" / "host_ca"

    @classmethod
    def generate(cls, state: Path) -> CertificateAuthority:
        """Make both CA keys; refuse to overwrite existing ones."""
        user_path, host_path = cls.paths(state)
        for path in (user_path, host_path):
            if path.exists():
                raise ConfigError(f"{path} exists already; refusing to replace it")
        user_key = asyncssh.generate_private_key("ssh-ed25519", comment="jit user CA")
        host_key = asyncssh.generate_private_key("ssh-ed25519", comment="jit host CA")
        write_private_key(user_key, user_path)
        write_private_key(host_key, host_path)
        logger.info("Generated user CA %s", user_key.get_fingerprint())

        return cls(user_key, host_key)

    @classmethod
    def load(cls, state: Path) -> CertificateAuthority:
        """Read both CA keys from the state directory."""
        user_path, host_path = cls.paths(state)

        return cls(read_private_key(user_path), read_private_key(host_path))

    @property
    def user_fingerprint(self) -> str:
        """The SHA-256 fingerprint of the user CA key."""
        return self._user_key.get_fingerprint()

    def user_public_line(self) -> str:
        """One line for a target's ``TrustedUserCAKeys`` file."""
        return self._user_key.export_public_key().decode().strip()

    def host_public_line(self) -> str:
        """The host CA's public key, for an ``@cert-authority`` line."""
        return self._host_key.export_public_key().decode().strip()

    def known_hosts_line(self, names: Sequence[str]) -> str:
        """A ``known_hosts`` line that trusts the bastion for ``names``."""
        return f"@cert-authority {','.join(names)} {self.host_public_line()}"

    def user_ca_key(self) -> asyncssh.SSHKey:
        """The user CA's public key, as the bastion checks it."""
        return asyncssh.import_public_key(self._user_key.export_public_key())

    def issue_user_certificate(
        self, public_key: asyncssh.SSHKey, spec: UserCertificateSpec
    ) -> asyncssh.SSHCertificate:
        """Sign a user certificate for ``public_key`` exactly as ``spec`` says.

        Only port forwarding and a pty are permitted; agent and X11
        forwarding and user rc files are not, and no field is left to a
        library default.
        """
        if not spec.principals or not all(spec.principals):
            raise ValueError("a certificate needs at least one principal")
        now = int(time.time())
        networks = [
            ipaddress.ip_network(a, strict=False) for a in spec.source_addresses
        ]

        return self._user_key.generate_user_certificate(
            public_key,
            spec.key_id,
            version=1,
            serial=spec.serial,
            principals=list(spec.principals),
            valid_after=now - BACKDATE,
            valid_before=now + spec.ttl,
            force_command=None,
            source_address=[str(network) for network in networks] or None,
            permit_x11_forwarding=False,
            permit_agent_forwarding=False,
            permit_port_forwarding=True,
            permit_pty=True,
            permit_user_rc=False,
            touch_required=True,
            sig_alg="ssh-ed25519",
            comment=spec.key_id,
        )

    def issue_host_certificate(
        self, host_key: asyncssh.SSHKey, names: Sequence[str], serial: int
    ) -> asyncssh.SSHCertificate:
        """Sign the bastion's host key for the names clients use."""
        now = int(time.time())

        return self._host_key.generate_host_certificate(
            host_key,
            f"jit-bastion host {names[0]}",
            version=1,
            serial=serial,
            principals=list(names),
            valid_after=now - BACKDATE,
            valid_before=now + HOST_CERTIFICATE_LIFETIME,
            sig_alg="ssh-ed25519",
            comment=names[0],
        )
