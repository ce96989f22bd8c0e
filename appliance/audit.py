"""The audit trail: one JSON event per line, each chained to the last.

Every event's body is canonical JSON (sorted keys, ASCII only) that
includes its sequence number and the hash of the event before it; its
own hash is the SHA-256 of that body. Editing, removing or reordering
any event therefore breaks the chain at that point, which
:func:`verify_chain` reports. Appends take the row lock of the single
``audit_head`` row, so the chain stays linear across processes and
across appliances that share one PostgreSQL store.

The audit trail is a stream of its own, not a log: it never carries a
password, a TOTP code or secret, or a token, and no session content.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .store import audit_events, audit_head

logger = logging.getLogger(__name__)

GENESIS = "0" * 64

#: Fields every event may carry besides its kind; others go in ``detail``.
FIELDS = (
    "actor",
    "source",
    "target",
    "request_id",
    "serial",
    "key_id",
    "reason",
    "outcome",
)

Sink = Callable[[Mapping[str, Any]], None]


def utc_timestamp(moment: datetime | None = None) -> str:
    """Return an ISO 8601 UTC timestamp with milliseconds and ``Z``."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def canonical(event: Mapping[str, Any]) -> str:
    """Encode an event the one way its hash is computed over."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def event_hash(body: str) -> str:
    """Return the SHA-256 hex digest of an event's canonical body."""
    return hashlib.sha256(body.encode("ascii")).hexdigest()


class Auditor:
    """Appends events to the chain in the database, then to the sinks.

    The database is the record; a sink that fails (a full disk, a
    syslog server that is down) is logged and never undoes or blocks
    the database write.
    """

    def __init__(self, engine: Engine, sinks: Sequence[Sink] = ()) -> None:
        self._engine = engine
        self._sinks = list(sinks)

    def add_sink(self, sink: Sink) -> None:
        """Also send each new event to ``sink``."""
        self._sinks.append(sink)

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append one event and return it, with its ``seq`` and ``hash``."""
        event = _shape(kind, fields)
        with self._engine.begin() as connection:
            event = _append(connection, event)
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:
                logger.exception(
                    "Audit sink %r failed for event %d", sink, event["seq"]
                )

        return event


def _shape(kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Split known fields from free-form detail and drop empty ones."""
    event: dict[str, Any] = {"kind": kind}
    detail = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name in FIELDS:
            event[name] = value
        else:
            detail[name] = value
    if detail:
        event["detail"] = detail

    return event


def _append(connection: Connection, event: dict[str, Any]) -> dict[str, Any]:
    """Link ``event`` to the head of the chain and store it."""
    # Updating the head row first takes its write lock in SQLite and
    # PostgreSQL alike, so the read below sees a head nobody else moves.
    connection.execute(
        sa.update(audit_head)
        .where(audit_head.c.id == 1)
        .values(seq=audit_head.c.seq + 1)
    )
    seq, prev = connection.execute(
        sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
    ).one()
    event = {**event, "seq": seq, "ts": utc_timestamp(), "prev": prev}
    body = canonical(event)
    digest = event_hash(body)
    connection.execute(
        sa.update(audit_head).where(audit_head.c.id == 1).values(hash=digest)
    )
    connection.execute(
        sa.insert(audit_events).values(
            seq=seq,
            ts=event["ts"],
            kind=event["kind"],
            actor=_column_text(event.get("actor")),
            target=_column_text(event.get("target")),
            body=body,
            prev_hash=prev,
            hash=digest,
        )
    )

    return {**event, "hash": digest}


def _column_text(value: Any) -> str | None:
    """Return a short text copy of a value for an indexed column."""
    return None if value is None else str(value)[:128]


@dataclass(frozen=True)
class ChainProblem:
    """Where and how the chain breaks."""

    seq: int
    message: str


def verify_chain(engine: Engine, batch: int = 5000) -> tuple[int, ChainProblem | None]:
    """Check every event; return how many were checked and the first problem."""
    expected_prev = GENESIS
    expected_seq = 1
    count = 0
    for seq, body, prev_hash, digest in _iter_events(engine, batch):
        problem = _check_event(
            seq, body, prev_hash, digest, expected_seq, expected_prev
        )
        if problem:
            return count, problem
        expected_prev = digest
        expected_seq = seq + 1
        count += 1
    head_seq, head_hash = _read_head(engine)
    if head_seq != count or head_hash != expected_prev:
        return count, ChainProblem(
            count + 1,
            f"the chain ends at event {count} but its head names event "
            f"{head_seq}: events after {count} were removed",
        )

    return count, None


def _check_event(
    seq: int,
    body: str,
    prev_hash: str,
    digest: str,
    expected_seq: int,
    expected_prev: str,
) -> ChainProblem | None:
    """Return the problem with one stored event, if it has one."""
    if seq != expected_seq:
        return ChainProblem(expected_seq, f"event {expected_seq} is missing")
    if event_hash(body) != digest:
        return ChainProblem(seq, f"event {seq} was edited: its hash does not match")
    try:
        claimed = json.loads(body)
    except ValueError:
        return ChainProblem(seq, f"event {seq} is not valid JSON")
    if (
        claimed.get("seq") != seq
        or prev_hash != expected_prev
        or (claimed.get("prev") != expected_prev)
    ):
        return ChainProblem(
            seq, f"event {seq} does not follow event {seq - 1}: removed or reordered"
        )

    return None


def _iter_events(engine: Engine, batch: int) -> Iterator[tuple[int, str, str, str]]:
    """Yield stored events in order, a batch at a time."""
    last = 0
    cols = (audit_events.c.seq, audit_events.c.body, audit_events.c.prev_hash)
    while True:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(*cols, audit_events.c.hash)
                .where(audit_events.c.seq > last)
                .order_by(audit_events.c.seq)
                .limit(batch)
            ).all()
        if not rows:
            return
        for row in rows:
            yield row[0], row[1], row[2], row[3]
        last = rows[-1][0]


def _read_head(engine: Engine) -> tuple[int, str]:
    """Return the chain head's sequence number and hash."""
    with engine.connect() as connection:
        seq, digest = connection.execute(
            sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
        ).one()

    return int(seq), str(digest)


def read_events(
    engine: Engine, *, kind: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Return the newest events, newest first, optionally of one kind."""
    query = sa.select(audit_events.c.body, audit_events.c.hash)
    if kind:
        query = query.where(audit_events.c.kind == kind)
    query = query.order_by(audit_events.c.seq.desc()).limit(limit)
    with engine.connect() as connection:
        rows = connection.execute(query).all()

    return [{**json.loads(body), "hash": digest} for body, digest in rows]
