"""The state directory: config, CA keys, host key, database.

Everything the appliance keeps lives under one directory (default
``/var/lib/jit-bastion``), so one volume or one backup holds it all.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

import asyncssh
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy.engine import Engine

from . import store
from .audit import Auditor
from .ca import CertificateAuthority, read_private_key, write_private_key
from .config import (
    CONFIG_NAME,
    Config,
    example_config_text,
    load_config,
    parse_hostport,
)
from .errors import ConfigError
from .sinks import build_sinks

logger = logging.getLogger(__name__)

#: Listen addresses that mean "every interface", never a name to certify.
_ANY = ("0.0.0.0", "::")  # noqa: S104 (not a bind)


@dataclass
class State:
    """An opened state directory with its config and database."""

    path: Path
    config: Config
    engine: Engine = field(repr=False)
    auditor: Auditor = field(repr=False)

    @classmethod
    def open(cls, path: Path) -> State:
        """Load the config and connect to the database of ``path``."""
        if not (path / CONFIG_NAME).exists():
            raise ConfigError(
                f"{path} holds no {CONFIG_NAME}: run "
                f"'jit-bastion --state {path} init' first"
            )
        config = load_config(path)
        url = store.database_url(config.appliance.database_url, path)
        engine = store.create_engine(url)
        auditor = Auditor(engine)
        for sink in build_sinks(config.audit, config.appliance.name, auditor.record):
            auditor.add_sink(sink)

        return cls(path, config, engine, auditor)

    @cached_property
    def ca(self) -> CertificateAuthority:
        """The certificate authority, read on first use."""
        return CertificateAuthority.load(self.path)

    @property
    def host_key_path(self) -> Path:
        """The bastion's own host key."""
        return self.path / "ssh" / "host_key"

    @property
    def host_certificate_path(self) -> Path:
        """The host certificate that the host CA signed for the bastion."""
        return self.path / "ssh" / "host_key-cert.pub"

    def host_names(self) -> list[str]:
        """The names a host certificate must cover: DNS name and address."""
        names = [self.config.appliance.name]
        host, _ = parse_hostport(self.config.ssh.listen, 2222)
        if host not in ("0.0.0.0", "::", *names):  # noqa: S104 (not a bind)
            names.append(host)

        return names

    @property
    def web_dir(self) -> Path:
        """The web UI's keys: TLS pair, session key, TOTP encryption key."""
        return self.path / "web"

    @property
    def totp_key_path(self) -> Path:
        """The Fernet key that encrypts TOTP secrets, outside the database."""
        return self.web_dir / "totp.key"

    def write_web_keys(self) -> None:
        """Make whichever web key is missing; an existing one is kept."""
        web = self.web_dir
        web.mkdir(mode=0o700, exist_ok=True)
        if not (web / "session.key").exists():
            _write_private_file(web / "session.key", secrets.token_hex(32).encode())
        if not self.totp_key_path.exists():
            _write_private_file(self.totp_key_path, Fernet.generate_key())
        if not (web / "tls.key").exists():
            web_host, _ = parse_hostport(self.config.web.listen, 8443)
            names = list(dict.fromkeys([*self.host_names(), web_host]))
            key, cert = generate_tls_pair([n for n in names if n not in _ANY])
            _write_private_file(web / "tls.key", key)
            (web / "tls.crt").write_bytes(cert)

    def write_host_certificate(self) -> None:
        """Sign the host key for the current names and write the cert."""
        host_key = read_private_key(self.host_key_path)
        cert = self.ca.issue_host_certificate(
            host_key, self.host_names(), secrets.randbits(63)
        )
        cert.write_certificate(self.host_certificate_path)


def initialize(
    path: Path,
    *,
    name: str | None = None,
    ssh_listen: str | None = None,
    web_listen: str | None = None,
    database_url: str | None = None,
) -> State:
    """Create a new state directory: config, CA, host key, database."""
    if (path / CONFIG_NAME).exists():
        raise ConfigError(f"{path} is initialised already")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    text = example_config_text()
    for section, key, value in (
        ("appliance", "name", name),
        ("ssh", "listen", ssh_listen),
        ("web", "listen", web_listen),
        ("appliance", "database_url", database_url),
    ):
        if value is not None:
            text = set_config_value(text, section, key, value)
    (path / CONFIG_NAME).write_text(text)
    state = State.open(path)
    store.upgrade(state.engine)
    CertificateAuthority.generate(path)
    host_key = asyncssh.generate_private_key("ssh-ed25519", comment="jit-bastion")
    write_private_key(host_key, state.host_key_path)
    state.write_host_certificate()
    state.write_web_keys()
    state.auditor.record("appliance.initialised", actor="cli", target=name)

    return state


def _write_private_file(path: Path, data: bytes) -> None:
    """Write a new file that only the owner may read, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def generate_tls_pair(names: list[str]) -> tuple[bytes, bytes]:
    """A self-signed P-256 key and certificate for ``names``, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public), False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )

    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _san(names: list[str]) -> list[x509.GeneralName]:
    """Subject alternative names: IP entries for addresses, DNS for the rest."""
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))

    return entries


def set_config_value(text: str, section: str, key: str, value: str) -> str:
    """Replace one string key of one table in commented TOML text."""
    table = re.search(rf"^\[{re.escape(section)}\]$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if table is None:
        raise ConfigError(f"no [{section}] table in the config template")
    line = re.compile(rf"^{re.escape(key)} = .*$", re.M)
    quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    body, count = line.subn(lambda _: f"{key} = {quoted}", table[1], count=1)
    if count != 1:
        raise ConfigError(f"no {section}.{key} in the config template")

    return text[: table.start(1)] + body + text[table.end(1) :]
