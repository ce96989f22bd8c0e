"""Reading requests and their certificates back for pages and the API."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from appliance.errors import NotFound
from appliance.store import access_requests, certificates, revocations


@dataclass(frozen=True)
class Record:
    """One request, the certificate issued for it, and any revocation."""

    request_id: str
    user: str
    target: str
    reason: str
    source: str
    created_at: datetime
    serial: int
    valid_after: datetime
    valid_before: datetime
    certificate: str
    logins: tuple[str, ...]
    revoked_at: datetime | None
    revoked_by: str | None

    @property
    def login(self) -> str:
        """The account the certificate logs in as on the target."""
        return self.logins[0] if self.logins else self.user

    def seconds_left(self, now: datetime | None = None) -> int:
        """Seconds until the certificate runs out; 0 once it has."""
        now = now or datetime.now(UTC)

        return max(0, int((self.valid_before - now).total_seconds()))

    def time_left(self, now: datetime | None = None) -> str:
        """``1 h 05 min``, ``14 min``, ``40 s``, or ``none``."""
        seconds = self.seconds_left(now)
        hours, rest = divmod(seconds, 3600)
        if hours:
            return f"{hours} h {rest // 60:02d} min"
        if rest >= 60:
            return f"{rest // 60} min"

        return f"{rest} s" if rest else "none"

    def status(self, now: datetime | None = None) -> str:
        """``revoked``, ``expired`` or ``active``."""
        if self.revoked_at is not None:
            return "revoked"

        return "active" if self.seconds_left(now) > 0 else "expired"


def _query() -> sa.Select[tuple[object, ...]]:
    """Requests joined to their certificates and revocations."""
    return (
        sa.select(
            access_requests,
            certificates.c.serial,
            certificates.c.valid_after,
            certificates.c.valid_before,
            certificates.c.certificate,
            revocations.c.revoked_at,
            revocations.c.revoked_by,
        )
        .join(certificates, certificates.c.request_id == access_requests.c.id)
        .outerjoin(revocations, revocations.c.serial == certificates.c.serial)
    )


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _record(row: sa.Row[tuple[object, ...]]) -> Record:
    """Build a :class:`Record` from a joined row."""
    m = row._mapping

    return Record(
        request_id=str(m["id"]),
        user=str(m["user_name"]),
        target=str(m["target"]),
        reason=str(m["reason"]),
        source=str(m["source"]),
        created_at=_aware(m["created_at"]),
        serial=int(m["serial"]),
        valid_after=_aware(m["valid_after"]),
        valid_before=_aware(m["valid_before"]),
        certificate=str(m["certificate"]),
        logins=tuple(json.loads(str(m["logins"]))),
        revoked_at=_aware(m["revoked_at"]) if m["revoked_at"] else None,
        revoked_by=m["revoked_by"],
    )


def find_record(engine: Engine, request_id: str) -> Record:
    """Return the request ``request_id``, or raise NotFound."""
    with engine.connect() as connection:
        row = connection.execute(
            _query().where(access_requests.c.id == request_id)
        ).first()
    if row is None:
        raise NotFound(f"no request {request_id!r}")

    return _record(row)


def list_records(
    engine: Engine, *, user: str | None = None, active: bool = False, limit: int = 200
) -> list[Record]:
    """Newest requests first; of one user, or only unexpired unrevoked ones."""
    query = _query()
    if user is not None:
        query = query.where(access_requests.c.user_name == user)
    if active:
        query = query.where(
            certificates.c.valid_before > datetime.now(UTC),
            revocations.c.serial.is_(None),
        )
    query = query.order_by(access_requests.c.created_at.desc()).limit(limit)
    with engine.connect() as connection:
        rows = connection.execute(query).all()

    return [_record(row) for row in rows]
