"""The audit trail: one JSON event per line, each chained to the last.

Every event's body is canonical JSON (sorted keys, ASCII only) that
includes its sequence number and the hash of the event before it; its
own hash is the SHA-256 of that body. Editing, removing or reordering
any event therefore breaks the chain at that point, which
:func:`verify_chain` reports. Appends take the row lock of the single
``audit_head`` row, so the chain stays linear across processes and
across appliances that share one PostgreSQL store. A cut-off tail
(the last events removed and the head row rewound with them) leaves a
valid but shorter chain; :func:`log_head` writes the head to the log at
intervals, and ``audit verify --head`` checks a head seen there.

Free text never breaks out of its field: the JSON encoding escapes
quotes, newlines and every non-ASCII character, so a key id or a login
name that holds a newline cannot forge a second record.

The audit trail is a stream of its own, not a log: it never carries a
password, a TOTP code or secret, or a token, and no session content.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .config import parse_duration
from .errors import InputError
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


class Sink(Protocol):
    """Somewhere events go after the database; never blocks the caller."""

    def submit(self, event: Mapping[str, Any]) -> None:
        """Queue ``event`` for delivery and return at once."""

    def close(self, timeout: float) -> None:
        """Deliver what is queued within ``timeout`` seconds, then stop."""


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

    The database is the record: an event is committed before any sink
    sees it, and a sink only queues it (a full disk or a syslog server
    that is down never blocks or undoes the database write).
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
            sink.submit(event)

        return event

    def close(self, timeout: float = 5.0) -> None:
        """Give each sink up to ``timeout`` seconds to deliver its queue."""
        for sink in self._sinks:
            sink.close(timeout)


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
            seq=seq, body=body, prev_hash=prev, hash=digest, **_columns(event)
        )
    )

    return {**event, "hash": digest}


def _columns(event: Mapping[str, Any]) -> dict[str, Any]:
    """The indexed columns that copy an event's body, for filtering."""
    return {name: _column_text(name, event.get(name)) for name in _COPIED}


_COPIED = ("ts", "kind", "actor", "target")
#: The copied columns' lengths, looked up once: verify needs them per event.
_LENGTHS: dict[str, int | None] = {
    name: getattr(audit_events.c[name].type, "length", None) for name in _COPIED
}


def _column_text(name: str, value: Any) -> str | None:
    """A text copy of a value, cut to fit its column (PostgreSQL enforces it)."""
    if value is None:
        return None

    return str(value)[: _LENGTHS[name]]


# Verifying the chain.


@dataclass(frozen=True)
class ChainProblem:
    """Where and how the chain breaks."""

    seq: int
    message: str


@dataclass(frozen=True)
class StoredEvent:
    """One row of ``audit_events`` as stored."""

    seq: int
    ts: str
    kind: str
    actor: str | None
    target: str | None
    body: str
    prev_hash: str
    hash: str


def verify_chain(
    engine: Engine, batch: int = 5000, head: tuple[int, str] | None = None
) -> tuple[int, ChainProblem | None]:
    """Check every event; return how many were checked and the first problem.

    ``head`` is a ``(seq, hash)`` pair seen earlier (in the log, from
    :func:`log_head`): the chain must still hold that event unchanged,
    which catches a tail cut off together with the head row.
    """
    expected_prev = GENESIS
    count = 0
    for row in _iter_events(engine, batch):
        problem = _check_event(row, count + 1, expected_prev)
        if problem:
            return count, problem
        if head and row.seq == head[0] and row.hash != head[1]:
            return count, ChainProblem(
                row.seq, f"event {row.seq} is not the one whose hash was logged"
            )
        expected_prev = row.hash
        count += 1

    return count, _check_tail(engine, count, expected_prev, head)


def _check_event(
    row: StoredEvent, expected_seq: int, expected_prev: str
) -> ChainProblem | None:
    """Return the problem with one stored event, if it has one."""
    seq = row.seq
    if seq != expected_seq:
        gap = "" if seq == expected_seq + 1 else f" to {seq - 1}"
        return ChainProblem(expected_seq, f"event {expected_seq}{gap} was removed")
    if event_hash(row.body) != row.hash:
        return ChainProblem(seq, f"event {seq} was edited: its hash does not match")
    try:
        claimed = json.loads(row.body)
    except ValueError:
        return ChainProblem(seq, f"event {seq} is not valid JSON")
    if claimed.get("seq") != seq:
        return ChainProblem(
            seq,
            f"event {seq} holds the body of event {claimed.get('seq')!r}: "
            "events were reordered",
        )
    if row.prev_hash != expected_prev or claimed.get("prev") != expected_prev:
        return ChainProblem(
            seq,
            f"event {seq} does not follow event {seq - 1}: event {seq - 1} was "
            "edited and rehashed, or events were removed or reordered",
        )
    if _columns(claimed) != _columns(row.__dict__):
        return ChainProblem(
            seq, f"event {seq} was edited: its columns differ from its body"
        )

    return None


def _check_tail(
    engine: Engine, count: int, last_hash: str, head: tuple[int, str] | None
) -> ChainProblem | None:
    """Check that the chain ends where its head row and a logged head say."""
    head_seq, head_hash = read_head(engine)
    if head_seq > count:
        return ChainProblem(
            count + 1,
            f"the chain ends at event {count} but its head names event "
            f"{head_seq}: events after {count} were removed",
        )
    if head_seq < count or head_hash != last_hash:
        return ChainProblem(
            head_seq + 1,
            f"the chain does not end at its head (event {head_seq}): events "
            "were added or the head was edited",
        )
    if head and head[0] > count:
        return ChainProblem(
            count + 1,
            f"the logged head names event {head[0]} but the chain ends at "
            f"event {count}: events after {count} were removed",
        )

    return None


#: The columns in StoredEvent's field order, so a row builds it by position.
_STORED_COLUMNS = tuple(audit_events.c[f.name] for f in fields(StoredEvent))


def _iter_events(engine: Engine, batch: int) -> Iterator[StoredEvent]:
    """Yield stored events in order, a batch at a time."""
    last = 0
    table = audit_events
    while True:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(*_STORED_COLUMNS)
                .where(table.c.seq > last)
                .order_by(table.c.seq)
                .limit(batch)
            ).all()
        if not rows:
            return
        for row in rows:
            yield StoredEvent(*row)
        last = rows[-1][0]


def read_head(engine: Engine) -> tuple[int, str]:
    """Return the chain head's sequence number and hash."""
    with engine.connect() as connection:
        seq, digest = connection.execute(
            sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
        ).one()

    return int(seq), str(digest)


_HEAD = re.compile(r"(?:seq=)?(\d+)[:\s]+(?:hash=)?([0-9a-f]{64})")


def parse_head(text: str) -> tuple[int, str]:
    """Read ``SEQ:HASH`` or a logged ``audit head seq=N hash=H`` line."""
    match = _HEAD.search(text)
    if match is None:
        raise InputError(
            f"{text!r} is not a chain head: give SEQ:HASH or the "
            "'audit head seq=N hash=H' line from the bastion's log"
        )

    return int(match[1]), match[2]


async def log_head(engine: Engine, interval: float) -> None:
    """Write the chain head to the log every ``interval`` seconds, forever.

    The log leaves the machine separately from the database, so a tail
    cut off later, head row and all, still shows against these lines.
    """
    while True:
        try:
            seq, digest = await asyncio.to_thread(read_head, engine)
            logger.info("audit head seq=%d hash=%s", seq, digest)
        except sa.exc.SQLAlchemyError as exc:
            logger.warning("Could not read the audit head: %s", type(exc).__name__)
        await asyncio.sleep(interval)


# Reading events.


@dataclass(frozen=True)
class EventFilter:
    """Which events :func:`read_events` returns; None means any."""

    kind: str | None = None
    since: str | None = None
    until: str | None = None
    user: str | None = None
    target: str | None = None


def read_events(
    engine: Engine,
    *,
    kind: str | None = None,
    limit: int = 100,
    where: EventFilter | None = None,
    oldest_first: bool = False,
) -> list[dict[str, Any]]:
    """Return the newest ``limit`` matching events, newest first by default.

    ``kind`` matches a whole kind (``tunnel.closed``) or a family
    (``tunnel``); ``where`` adds time, user and target filters.
    """
    where = where or EventFilter()
    if kind:
        where = dataclasses.replace(where, kind=kind)
    query = sa.select(audit_events.c.body, audit_events.c.hash)
    for condition in _conditions(where):
        query = query.where(condition)
    query = query.order_by(audit_events.c.seq.desc()).limit(limit)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    events = [{**json.loads(body), "hash": digest} for body, digest in rows]

    return events[::-1] if oldest_first else events


def _conditions(where: EventFilter) -> Iterator[sa.ColumnElement[bool]]:
    """SQL conditions for each filter that is set."""
    table = audit_events
    if where.kind:
        family = where.kind.rstrip(".") + ".%"
        yield sa.or_(table.c.kind == where.kind, table.c.kind.like(family))
    if where.since:
        yield table.c.ts >= where.since
    if where.until:
        yield table.c.ts < where.until
    if where.user:
        yield table.c.actor == where.user
    if where.target:
        yield table.c.target == where.target


_AGO = re.compile(r"\s*\d+\s*[smhd]\s*")


def parse_moment(text: str, now: datetime | None = None) -> str:
    """Turn ``2024-05-01``, an ISO time (UTC unless it says), or ``2h`` ago
    into the timestamp form events are stored with."""
    now = now or datetime.now(UTC)
    # A bare number could be a year; only a number with a unit is "ago".
    if _AGO.fullmatch(text):
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise InputError(f"{text!r} is not a time: {exc}") from None
        return utc_timestamp(now - timedelta(seconds=seconds))
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(
            f"{text!r} is not a time: give 2024-05-01, 2024-05-01T14:30Z "
            "or a duration ago such as 2h"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)

    return utc_timestamp(moment)


#: Columns of ``audit show``'s table: heading and the event field shown.
TABLE = (
    ("SEQ", "seq"),
    ("TIME (UTC)", "ts"),
    ("KIND", "kind"),
    ("ACTOR", "actor"),
    ("SOURCE", "source"),
    ("TARGET", "target"),
    ("SERIAL", "serial"),
    ("OUTCOME", "outcome"),
    ("REASON", "reason"),
)


def format_table(events: Sequence[Mapping[str, Any]]) -> list[str]:
    """Lay events out as aligned text columns, control characters escaped."""
    rows = [[heading for heading, _ in TABLE]]
    for event in events:
        rows.append([_cell(event.get(name)) for _, name in TABLE])
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE))]

    return [
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in rows
    ]


def _cell(value: Any) -> str:
    """One table cell: a value on one line, no terminal escapes, cut at 60."""
    if value is None:
        return "-"
    text = str(value)
    if not text.isprintable():
        text = json.dumps(text)[1:-1]

    return text if len(text) <= 60 else text[:57] + "..."
