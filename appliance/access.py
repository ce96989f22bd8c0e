"""Access requests and the grants behind each certificate.

A request names a person, a target, a reason and a lifetime. When policy
allows it, the request is stored, the CA signs a certificate for the
person's public key, and the certificate's serial becomes the key by
which the bastion finds the grant: which target, which ports, whether it
may start the guest. Revoking a serial ends the grant everywhere.
"""

from __future__ import annotations

import json
import logging
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncssh
import sqlalchemy as sa
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy.engine import Engine

from . import identity, policy
from .ca import UserCertificateSpec
from .certificate import parse_certificate
from .config import format_duration, parse_duration
from .errors import BastionError, InputError, NotFound, Refused
from .store import access_requests, certificates, revocations

if TYPE_CHECKING:
    from .inventory import Target
    from .state import State

logger = logging.getLogger(__name__)

MIN_RSA_BITS = 3072
REASON_MIN, REASON_MAX = 3, 500


@dataclass(frozen=True)
class Issued:
    """A signed certificate and what it grants."""

    request_id: str
    serial: int
    key_id: str
    user: str
    target: str
    principals: tuple[str, ...]
    valid_after: datetime
    valid_before: datetime
    certificate: str


@dataclass(frozen=True)
class Grant:
    """What the certificate with one serial lets its holder reach."""

    serial: int
    request_id: str
    user: str
    target: str
    ports: tuple[int, ...]
    may_start: bool
    valid_before: datetime
    revoked: bool


def check_reason(reason: str, required: bool = True) -> str:
    """Return a trimmed reason: one line of 3 to 500 printable characters."""
    reason = reason.strip()
    if not reason and not required:
        return reason
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in reason):
        raise InputError("the reason must be one line without control characters")
    if not REASON_MIN <= len(reason) <= REASON_MAX:
        raise InputError(
            f"the reason must be {REASON_MIN} to {REASON_MAX} characters long, "
            f"not {len(reason)}"
        )

    return reason


def import_user_public_key(text: str) -> asyncssh.SSHKey:
    """Parse one OpenSSH public key line: Ed25519, ECDSA or RSA >= 3072 bits.

    A private key pasted by mistake is refused with a message that says
    so; its text is never kept, logged or echoed.
    """
    text = text.strip()
    if "PRIVATE KEY" in text:
        raise InputError(
            "that is a private key: never share it. Give the public key, "
            "the one line in the file that ends in .pub"
        )
    try:
        parsed = serialization.load_ssh_public_key(text.encode())
    except (ValueError, UnicodeError, UnsupportedAlgorithm):
        raise InputError(
            "not an OpenSSH public key: give one line such as "
            "'ssh-ed25519 AAAA... you@laptop'"
        ) from None
    if isinstance(parsed, rsa.RSAPublicKey) and parsed.key_size < MIN_RSA_BITS:
        raise InputError(
            f"RSA keys must have at least {MIN_RSA_BITS} bits, this one has "
            f"{parsed.key_size}: make an Ed25519 key with ssh-keygen -t ed25519"
        )
    if not isinstance(
        parsed, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    ):
        raise InputError("use an Ed25519, ECDSA or RSA public key")

    return asyncssh.import_public_key(text)


def issue_certificate(
    state: State,
    *,
    user: str,
    target: str,
    reason: str,
    public_key: str,
    ttl: str | int | None = None,
    source: str = "local",
    via: str = "cli",
) -> Issued:
    """Check policy, record the request, and have the CA sign a certificate.

    Every refusal is audited with its reason before it is raised.
    """
    try:
        return _issue(state, user, target, reason, public_key, ttl, source, via)
    except BastionError as exc:
        state.auditor.record(
            "certificate.denied",
            actor=user,
            source=source,
            target=target,
            outcome="denied",
            error=str(exc),
            via=via,
        )
        logger.info("Refused a certificate for %r to %r: %s", user, target, exc)
        raise


def _issue(
    state: State,
    user_name: str,
    target_name: str,
    reason: str,
    public_key: str,
    ttl: str | int | None,
    source: str,
    via: str,
) -> Issued:
    """Do the work of :func:`issue_certificate`."""
    user = identity.find_user(state.engine, user_name)
    if user.disabled:
        raise Refused(f"user {user_name!r} is disabled")
    target = resolve_target(state, target_name)
    decision = policy.decide(state.config, user.name, user.groups, target)
    reason = check_reason(reason, decision.require_reason)
    seconds = _check_ttl(state, ttl, decision.max_ttl)
    key = import_user_public_key(public_key)
    request_id = secrets.token_hex(6)
    spec = UserCertificateSpec(
        serial=secrets.randbits(63) or 1,
        key_id=f"{user.name}/{request_id}",
        principals=tuple(dict.fromkeys((user.name, *decision.logins))),
        ttl=seconds,
        source_addresses=_source_addresses(state, source),
    )
    cert = state.ca.issue_user_certificate(key, spec)
    issued = _record(state, spec, cert, target, reason, source, decision, key)
    state.auditor.record(
        "certificate.issued",
        actor=user.name,
        source=source,
        target=target.name,
        request_id=request_id,
        serial=spec.serial,
        key_id=spec.key_id,
        reason=reason,
        outcome="issued",
        ttl=seconds,
        vmid=target.vmid,
        node=target.node,
        may_start=decision.may_start or None,
        via=via,
        valid_before=issued.valid_before.isoformat(),
        key=key.get_fingerprint(),
    )
    logger.info(
        "Issued certificate %d (%s) to %r for %r, %s",
        spec.serial,
        spec.key_id,
        user.name,
        target.name,
        format_duration(seconds),
    )

    return issued


def resolve_target(state: State, name: str) -> Target:
    """Find a target by name among static targets and Proxmox guests.

    A guest comes back under its canonical name, which the grant stores,
    with the tags, pool and vmid that policy matches on.
    """
    from . import inventory

    return inventory.resolve_target(state, name)


def _check_ttl(state: State, ttl: str | int | None, limit: int) -> int:
    """Return the lifetime in seconds, within the policy's limit."""
    if ttl is None or ttl == "":
        return min(state.config.certificates.default_ttl, limit)
    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if seconds > limit:
        raise Refused(
            f"a lifetime of {format_duration(seconds)} is longer than the "
            f"{format_duration(limit)} allowed"
        )

    return seconds


def _source_addresses(state: State, source: str) -> tuple[str, ...]:
    """The networks a certificate's source-address option names, if pinned."""
    certs = state.config.certificates
    if not certs.pin_source_address:
        return ()
    pinned = [source] if source not in ("local", "") else []

    return tuple(pinned) + certs.source_addresses


def _record(
    state: State,
    spec: UserCertificateSpec,
    cert: asyncssh.SSHCertificate,
    target: Target,
    reason: str,
    source: str,
    decision: policy.Decision,
    key: asyncssh.SSHKey,
) -> Issued:
    """Store the request and its certificate in one transaction."""
    request_id = spec.key_id.split("/", 1)[1]
    user = spec.key_id.split("/", 1)[0]
    now = datetime.now(UTC)
    window = parse_certificate(cert.public_data)
    valid_after = datetime.fromtimestamp(window.valid_after, UTC)
    valid_before = datetime.fromtimestamp(window.valid_before, UTC)
    text = cert.export_certificate().decode().strip()
    with state.engine.begin() as connection:
        connection.execute(
            sa.insert(access_requests).values(
                id=request_id,
                user_name=user,
                target=target.name,
                reason=reason,
                ttl=spec.ttl,
                source=source,
                logins=json.dumps(decision.logins),
                ports=json.dumps(decision.ports),
                may_start=decision.may_start,
                created_at=now,
            )
        )
        connection.execute(
            sa.insert(certificates).values(
                serial=spec.serial,
                request_id=request_id,
                user_name=user,
                key_id=spec.key_id,
                principals=json.dumps(spec.principals),
                fingerprint=key.get_fingerprint(),
                valid_after=valid_after,
                valid_before=valid_before,
                certificate=text,
            )
        )

    return Issued(
        request_id,
        spec.serial,
        spec.key_id,
        user,
        target.name,
        spec.principals,
        valid_after,
        valid_before,
        text,
    )


def find_grant(engine: Engine, serial: int) -> Grant:
    """Return the grant behind a certificate serial, or raise NotFound."""
    query = (
        sa.select(
            certificates.c.serial,
            certificates.c.valid_before,
            access_requests.c.id,
            access_requests.c.user_name,
            access_requests.c.target,
            access_requests.c.ports,
            access_requests.c.may_start,
            revocations.c.serial.label("revoked"),
        )
        .join(access_requests, access_requests.c.id == certificates.c.request_id)
        .outerjoin(revocations, revocations.c.serial == certificates.c.serial)
        .where(certificates.c.serial == serial)
    )
    with engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        raise NotFound(f"no certificate with serial {serial} was issued here")

    return Grant(
        serial=row.serial,
        request_id=row.id,
        user=row.user_name,
        target=row.target,
        ports=tuple(json.loads(row.ports)),
        may_start=bool(row.may_start),
        valid_before=_aware(row.valid_before),
        revoked=row.revoked is not None,
    )


def _aware(moment: datetime) -> datetime:
    """Return ``moment`` as UTC; SQLite hands back naive datetimes."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def revoke(state: State, serial: int, *, by: str, reason: str = "") -> None:
    """Revoke a certificate: the bastion closes its tunnels within seconds."""
    grant = find_grant(state.engine, serial)
    with state.engine.begin() as connection:
        exists = connection.execute(
            sa.select(revocations.c.serial).where(revocations.c.serial == serial)
        ).first()
        if exists:
            raise InputError(f"certificate {serial} is revoked already")
        connection.execute(
            sa.insert(revocations).values(
                serial=serial,
                revoked_at=datetime.now(UTC),
                revoked_by=by,
                reason=reason,
            )
        )
    state.auditor.record(
        "certificate.revoked",
        actor=by,
        target=grant.target,
        serial=serial,
        request_id=grant.request_id,
        reason=reason or None,
        outcome="revoked",
        holder=grant.user,
    )


def revoked_among(engine: Engine, serials: list[int]) -> set[int]:
    """Return which of ``serials`` are revoked."""
    if not serials:
        return set()
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(revocations.c.serial).where(revocations.c.serial.in_(serials))
        ).all()

    return {row[0] for row in rows}


def describe(issued: Issued) -> dict[str, Any]:
    """A JSON-ready summary of an issued certificate."""
    return {
        "request_id": issued.request_id,
        "serial": issued.serial,
        "key_id": issued.key_id,
        "target": issued.target,
        "principals": list(issued.principals),
        "valid_after": issued.valid_after.isoformat(),
        "valid_before": issued.valid_before.isoformat(),
        "certificate": issued.certificate,
    }
