"""Reading an offered OpenSSH user certificate and judging it.

asyncssh checks a certificate's signature, type, window and
``source-address`` itself, but accepts some certificates that OpenSSH
refuses (no principals at all, SHA-1 CA signatures, any lifetime) and
never says why it refused one. This module reads the certificate blob
as PROTOCOL.certkeys lays it out and gives the bastion's own verdict,
with a reason for every refusal. It runs before asyncssh's checks, never
instead of them.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .config import format_duration

CERT_TYPE_USER = 1
CERT_TYPE_HOST = 2
FOREVER = 2**64 - 1

#: Public-key fields after the nonce, per certificate key type.
_KEY_FIELDS = {
    "ssh-ed25519-cert-v01@openssh.com": 1,
    "ssh-rsa-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": 2,
    "sk-ssh-ed25519-cert-v01@openssh.com": 2,
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": 3,
}

#: Critical options the bastion understands; any other one is refused.
KNOWN_CRITICAL = frozenset({"source-address"})


class MalformedCertificate(ValueError):
    """The blob is not a well-formed OpenSSH certificate."""


@dataclass(frozen=True)
class Certificate:
    """The fields of an OpenSSH certificate that policy looks at."""

    key_type: str
    serial: int
    cert_type: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: dict[str, bytes] = field(default_factory=dict)
    extensions: frozenset[str] = frozenset()
    signature_key: bytes = b""
    signature_algorithm: str = ""

    @property
    def lifetime(self) -> int:
        """Seconds between ``valid_after`` and ``valid_before``."""
        return self.valid_before - self.valid_after

    @property
    def user(self) -> str:
        """The user named in a ``<user>/<request>`` key id."""
        return self.key_id.partition("/")[0]


class _Reader:
    """Reads SSH wire-format fields from a bytes blob."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def uint32(self) -> int:
        return int(struct.unpack(">I", self._take(4))[0])

    def uint64(self) -> int:
        return int(struct.unpack(">Q", self._take(8))[0])

    def string(self) -> bytes:
        return self._take(self.uint32())

    def text(self) -> str:
        try:
            return self.string().decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedCertificate("a text field is not UTF-8") from None

    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def _take(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise MalformedCertificate("the certificate is truncated")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk


def is_certificate_blob(blob: bytes) -> bool:
    """Return whether a public-key blob is an OpenSSH certificate."""
    try:
        return _Reader(blob).text().endswith("-cert-v01@openssh.com")
    except MalformedCertificate:
        return False


def parse_certificate(blob: bytes) -> Certificate:
    """Parse an OpenSSH certificate blob, or raise MalformedCertificate."""
    reader = _Reader(blob)
    key_type = reader.text()
    if key_type not in _KEY_FIELDS:
        raise MalformedCertificate(f"certificate type {key_type!r} is not supported")
    reader.string()  # nonce
    for _ in range(_KEY_FIELDS[key_type]):
        reader.string()
    serial = reader.uint64()
    cert_type = reader.uint32()
    key_id = reader.text()
    principals = _read_names(reader.string())
    valid_after, valid_before = reader.uint64(), reader.uint64()
    critical = _read_options(reader.string())
    extensions = frozenset(_read_options(reader.string()))
    reader.string()  # reserved
    signature_key = reader.string()
    signature = _Reader(reader.string())
    if not reader.at_end():
        raise MalformedCertificate("trailing bytes after the signature")

    return Certificate(
        key_type,
        serial,
        cert_type,
        key_id,
        principals,
        valid_after,
        valid_before,
        critical,
        extensions,
        signature_key,
        signature.text(),
    )


def _read_names(data: bytes) -> tuple[str, ...]:
    """Read a packed list of strings."""
    reader = _Reader(data)
    names = []
    while not reader.at_end():
        names.append(reader.text())

    return tuple(names)


def _read_options(data: bytes) -> dict[str, bytes]:
    """Read packed (name, data) option pairs."""
    reader = _Reader(data)
    options = {}
    while not reader.at_end():
        name = reader.text()
        options[name] = reader.string()

    return options


@dataclass(frozen=True)
class Rules:
    """What the bastion demands of a certificate beyond asyncssh's checks."""

    ca_key: bytes
    max_lifetime: int
    skew: int


@dataclass(frozen=True)
class Offer:
    """Who offered a certificate: the login asked for, from where, when."""

    login: str
    peer: str
    now: float


def judge(cert: Certificate, offer: Offer, rules: Rules) -> str | None:
    """Return why ``cert`` must be refused for this offer, or None.

    Deny by default: each check names the field it failed on, so an
    operator can tell from the log what was wrong with a certificate.
    The CA signature itself is verified by asyncssh afterwards.
    """
    checks = (
        _check_type,
        _check_ca,
        _check_critical_options,
        _check_principals,
        _check_window,
        _check_lifetime,
        _check_extensions,
        _check_source,
    )
    for check in checks:
        reason = check(cert, offer, rules)
        if reason:
            return reason

    return None


def _check_type(cert: Certificate, offer: Offer, rules: Rules) -> str | None:
    if cert.cert_type == CERT_TYPE_HOST:
        return "a host certificate was offered as a user certificate"
    if cert.cert_type != CERT_TYPE_USER:
        return f"unknown certificate type {cert.cert_type}"
    return None


def _check_ca(cert: Certificate, offer: Offer, rules: Rules) -> str | None:
    if cert.signature_key != rules.ca_key:
        return "signed by a CA other than this appliance's user CA"
    if cert.signature_algorithm == "ssh-rsa":
        return "the CA signature uses SHA-1 (ssh-rsa), which is refused"
    return None


def _check_critical_options(
    cert: Certificate, offer: Offer, rules: Rules
) -> str | None:
    unknown = sorted(set(cert.critical_options) - KNOWN_CRITICAL)
    if unknown:
        return f"unsupported critical option {unknown[0]!r}"
    return None


def _check_principals(cert: Certificate, offer: Offer, rules: Rules) -> str | None:
    if not cert.principals:
        return "the certificate names no principals"
    if offer.login not in cert.principals:
        return (
            f"login {offer.login!r} is not among the principals "
            f"{list(cert.principals)!r}"
        )
    return None


def _check_window(cert: Certificate, offer: Offer, rules: Rules) -> str | None:
    if offer.now >= cert.valid_before:
        return f"the certificate expired at {format_timestamp(cert.valid_before)}"
    if offer.now + rules.skew < cert.valid_after:
        return (
            "the certificate is not valid before "
            f"{format_timestamp(cert.valid_after)}, beyond the skew allowed"
        )
    return None


def _check_lifetime(cert: Certificate, offer: Offer, rules: Rules) -> str | None:
    # The CA backdates valid_after by a minute; that minute is not lifetime.
    limit = rules.max_lifetime + 60
    if cert.lifetime > limit:
        return (
            f"the certificate lives {format_lifetime(cert.lifetime)}, longer "
            f"than the {format_duration(rules.max_lifetime)} allowed"
        )
    return None


def _check_extensions(cert: Certificate, offer: Offer, rules: Rules) -> str | None:
    if "permit-port-forwarding" not in cert.extensions:
        return "the certificate does not permit port forwarding"
    return None


def _check_source(cert: Certificate, offer: Offer, rules: Rules) -> str | None:
    raw = cert.critical_options.get("source-address")
    if raw is None:
        return None
    try:
        text = _Reader(raw).text()
        networks = [ipaddress.ip_network(a, strict=False) for a in text.split(",")]
        address = ipaddress.ip_address(offer.peer)
    except (MalformedCertificate, ValueError):
        return "the certificate's source-address option is malformed"
    if not any(address in network for network in networks):
        return (
            f"source address {offer.peer} is not in the certificate's "
            f"source-address {text}"
        )
    return None


def format_timestamp(value: int) -> str:
    """Format a certificate time; the all-ones value means forever."""
    if value >= FOREVER:
        return "forever"
    try:
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{value} (far future)"


def format_lifetime(seconds: int) -> str:
    """Format a lifetime that may be absurdly long."""
    if seconds >= 100 * 365 * 86400:
        return "forever"

    return format_duration(seconds) if seconds > 0 else f"{seconds}s"
