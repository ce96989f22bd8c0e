"""``jit-bastion audit verify`` over a million events.

The events are written straight into a fresh appliance's SQLite store
with one ``executemany``, each built and chained exactly as
:func:`appliance.audit._append` does (same canonical body, same hash
over it, same head row), so ``verify`` has a real chain to walk. Only
the writing is fast; the verify is the real command in a process of
its own.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.audit import canonical, event_hash
from appliance.state import initialize
from appliance.store import audit_events, audit_head

from .report import Figure, Row, at_most

KINDS = ("tunnel.opened", "tunnel.closed", "auth.accepted", "certificate.issued")


@dataclass(frozen=True)
class ChainSettings:
    """How many events, and how many times to verify them."""

    events: int = 1_000_000
    rounds: int = 1


def measure_verify(
    directory: Path, settings: ChainSettings, candidate: Path | None = None
) -> list[Row]:
    """Write the events, then time ``audit verify`` on them.

    With a ``candidate`` checkout its ``audit verify`` takes turns with
    this one's on the same store.
    """
    state = directory / "audit-state"
    initialize(state, name="bastion.test").engine.dispose()
    started = time.monotonic()
    total = write_events(state / "jit-bastion.db", settings.events)
    written = time.monotonic() - started
    checkouts = {"jit-bastion": None, "candidate": candidate}
    times: dict[str, list[float]] = {}
    for _ in range(settings.rounds):
        for label, checkout in checkouts.items():
            if label == "jit-bastion" or checkout:
                seconds = _verify(state, total, checkout)
                times.setdefault(label, []).append(seconds)
    note = f"{total:,} events in SQLite, written in {written:.0f} s"

    return [
        Row(
            f"audit verify, {settings.events:,} events",
            "s",
            "-",
            {label: Figure.of(samples) for label, samples in times.items()},
            at_most(20),
            note=note,
            digits=2,
        )
    ]


def write_events(database: Path, count: int) -> int:
    """Append ``count`` chained events after the store's head; return the total.

    The indexes are dropped for the load and built again after it, and
    nothing is synced until the end: a bench store, written once.
    """
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        indexes = _drop_indexes(connection)
        seq, head = connection.execute(
            f"SELECT seq, hash FROM {audit_head.name} WHERE id = 1"
        ).fetchone()
        chain = _Chain(seq, head)
        connection.execute("BEGIN")
        connection.executemany(
            f"INSERT INTO {audit_events.name} "
            "(seq, ts, kind, actor, target, body, prev_hash, hash) "
            "VALUES (?,?,?,?,?,?,?,?)",
            chain.rows(count),
        )
        connection.execute(
            f"UPDATE {audit_head.name} SET seq = ?, hash = ? WHERE id = 1",
            (chain.seq, chain.prev),
        )
        connection.execute("COMMIT")
        for sql in indexes:
            connection.execute(sql)
    finally:
        connection.close()

    return chain.seq


def _drop_indexes(connection: sqlite3.Connection) -> list[str]:
    """Drop the audit table's indexes; return the SQL that makes them."""
    found = connection.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
        "AND tbl_name = ? AND sql IS NOT NULL",
        (audit_events.name,),
    ).fetchall()
    for name, _ in found:
        connection.execute(f'DROP INDEX "{name}"')

    return [sql for _, sql in found]


#: canonical() of the events below, written out: keys sorted, no spaces.
_BODY = (
    '{{"actor":"{actor}","kind":"{kind}","outcome":"ok","prev":"{prev}",'
    '"seq":{seq},"serial":{serial},"source":"192.0.2.7","target":"{target}",'
    '"ts":"{ts}"}}'
)


class _Chain:
    """Events that follow event ``seq`` whose hash is ``prev``."""

    def __init__(self, seq: int, prev: str) -> None:
        self.seq = seq
        self.prev = prev

    def rows(self, count: int) -> Iterator[tuple[object, ...]]:
        """``count`` rows of ``audit_events``, each chained to the last."""
        for number in range(count):
            event = self._event(number)
            body = _BODY.format(**event)
            if number < 100 and body != canonical(event):
                raise AssertionError(f"the body template is not canonical: {body}")
            digest = event_hash(body)
            yield (
                self.seq,
                event["ts"],
                event["kind"],
                event["actor"],
                event["target"],
                body,
                self.prev,
                digest,
            )
            self.prev = digest

    def _event(self, number: int) -> dict[str, object]:
        self.seq += 1
        day, millis = 1 + number // 86_400_000 % 28, number % 86_400_000
        return {
            "actor": f"user{number % 50}",
            "kind": KINDS[number % len(KINDS)],
            "outcome": "ok",
            "prev": self.prev,
            "seq": self.seq,
            "serial": 1000 + number,
            "source": "192.0.2.7",
            "target": f"web{number % 20:02d}",
            "ts": f"2026-01-{day:02d}T{_clock(millis)}Z",
        }


def _clock(millis: int) -> str:
    """``HH:MM:SS.mmm`` of a millisecond in the day."""
    seconds, millis = divmod(millis, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)

    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _verify(state: Path, total: int, checkout: Path | None) -> float:
    argv = [sys.executable, "-m", "appliance.cli", "--state", str(state)]
    env = {**os.environ, "PYTHONPATH": str(checkout)} if checkout else None
    started = time.monotonic()
    result = subprocess.run(
        [*argv, "audit", "verify"], capture_output=True, text=True, timeout=900, env=env
    )
    seconds = time.monotonic() - started
    if result.returncode != 0 or f"{total} events" not in result.stdout:
        raise RuntimeError(f"audit verify failed:\n{result.stdout}{result.stderr}")

    return seconds
