"""The audit chain: every edit, removal, reordering and cut tail is found."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from appliance import audit, cli, store
from appliance.audit import Auditor, EventFilter
from appliance.errors import InputError
from appliance.state import State, initialize
from appliance.store import audit_events, audit_head

FORGED = '{"kind":"auth.accepted","actor":"root","outcome":"accepted"}'


@pytest.fixture
def engine(database_url: str | None, tmp_path: Path) -> Iterator[Engine]:
    """A migrated store: SQLite in a file, or a new PostgreSQL database."""
    url = database_url or f"sqlite:///{tmp_path / 'audit.db'}"
    engine = store.create_engine(url)
    store.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def chain(engine: Engine) -> list[dict[str, object]]:
    """Five recorded events."""
    auditor = Auditor(engine)
    return [
        auditor.record("tunnel.opened", actor="alice", target="web01", serial=i)
        for i in range(1, 6)
    ]


def _execute(engine: Engine, *statements: sa.Executable) -> None:
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(statement)


def _row(engine: Engine, seq: int) -> sa.Row[tuple[object, ...]]:
    with engine.connect() as connection:
        return connection.execute(
            sa.select(audit_events).where(audit_events.c.seq == seq)
        ).one()


def _problem(engine: Engine, **kwargs: object) -> audit.ChainProblem:
    _, problem = audit.verify_chain(engine, **kwargs)  # type: ignore[arg-type]
    assert problem is not None, "the chain verified, but it was tampered with"
    return problem


def test_chain_links_each_event_to_the_one_before(
    engine: Engine, chain: list[dict[str, object]]
) -> None:
    assert audit.verify_chain(engine) == (5, None)
    assert chain[0]["prev"] == audit.GENESIS
    for before, after in itertools.pairwise(chain):
        assert after["prev"] == before["hash"]
    assert all(str(e["ts"]).endswith("Z") for e in chain)


def test_edited_event_is_found(engine: Engine, chain: list[dict[str, object]]) -> None:
    body = str(_row(engine, 3).body).replace('"alice"', '"mallory"')
    _execute(
        engine,
        sa.update(audit_events).where(audit_events.c.seq == 3).values(body=body),
    )

    problem = _problem(engine)

    assert problem.seq == 3
    assert "event 3 was edited" in problem.message


def test_edited_and_rehashed_event_breaks_the_next_link(
    engine: Engine, chain: list[dict[str, object]]
) -> None:
    body = str(_row(engine, 3).body).replace('"alice"', '"mallory"')
    digest = audit.event_hash(body)
    _execute(
        engine,
        sa.update(audit_events)
        .where(audit_events.c.seq == 3)
        .values(body=body, hash=digest, actor="mallory"),
    )

    problem = _problem(engine)

    assert problem.seq == 4
    assert "event 3 was edited and rehashed" in problem.message


def test_edited_filter_column_is_found(
    engine: Engine, chain: list[dict[str, object]]
) -> None:
    _execute(
        engine,
        sa.update(audit_events).where(audit_events.c.seq == 2).values(actor="bob"),
    )

    problem = _problem(engine)

    assert problem.seq == 2
    assert "its columns differ from its body" in problem.message


def test_removed_event_is_found(engine: Engine, chain: list[dict[str, object]]) -> None:
    _execute(engine, sa.delete(audit_events).where(audit_events.c.seq == 3))

    problem = _problem(engine)

    assert problem.seq == 3
    assert problem.message == "event 3 was removed"


def test_reordered_events_are_found(
    engine: Engine, chain: list[dict[str, object]]
) -> None:
    two, three = _row(engine, 2), _row(engine, 3)
    columns = ("ts", "kind", "actor", "target", "body", "prev_hash", "hash")
    _execute(
        engine,
        sa.update(audit_events)
        .where(audit_events.c.seq == 2)
        .values({c: getattr(three, c) for c in columns}),
        sa.update(audit_events)
        .where(audit_events.c.seq == 3)
        .values({c: getattr(two, c) for c in columns}),
    )

    problem = _problem(engine)

    assert problem.seq == 2
    assert "holds the body of event 3: events were reordered" in problem.message


def test_cut_tail_is_found_by_the_head_row(
    engine: Engine, chain: list[dict[str, object]]
) -> None:
    _execute(engine, sa.delete(audit_events).where(audit_events.c.seq > 3))

    problem = _problem(engine)

    assert problem.seq == 4
    assert "events after 3 were removed" in problem.message


def test_cut_tail_with_rewound_head_is_found_by_the_logged_head(
    engine: Engine, chain: list[dict[str, object]]
) -> None:
    logged = audit.parse_head(f"audit head seq=5 hash={chain[4]['hash']}")
    _execute(
        engine,
        sa.delete(audit_events).where(audit_events.c.seq > 3),
        sa.update(audit_head).values(seq=3, hash=chain[2]["hash"]),
    )
    assert audit.verify_chain(engine) == (3, None)

    problem = _problem(engine, head=logged)

    assert problem.seq == 4
    assert "logged head names event 5" in problem.message


def test_logged_head_with_another_hash_is_found(
    engine: Engine, chain: list[dict[str, object]]
) -> None:
    problem = _problem(engine, head=(4, str(chain[3]["prev"])))

    assert problem.seq == 4
    assert "not the one whose hash was logged" in problem.message


def test_appended_event_beyond_the_head_is_found(
    engine: Engine, chain: list[dict[str, object]]
) -> None:
    event = {"kind": "x", "seq": 6, "ts": "t", "prev": chain[4]["hash"]}
    body = audit.canonical(event)
    _execute(
        engine,
        sa.insert(audit_events).values(
            seq=6,
            ts="t",
            kind="x",
            body=body,
            prev_hash=chain[4]["hash"],
            hash=audit.event_hash(body),
        ),
    )

    problem = _problem(engine)

    assert problem.seq == 6
    assert "events were added or the head was edited" in problem.message


@pytest.mark.parametrize("field", ["key_id", "actor", "reason"])
def test_newline_or_json_in_free_text_cannot_forge_a_record(
    engine: Engine, field: str
) -> None:
    value = f'alice"}}\n{FORGED}\r\n\u2028{FORGED}'
    auditor = Auditor(engine)

    event = auditor.record("auth.refused", **{field: value, "outcome": "refused"})

    body = str(_row(engine, 1).body)
    assert "\n" not in body and "\r" not in body and body.isascii()
    assert json.loads(body)[field] == value
    assert [e["kind"] for e in audit.read_events(engine)] == ["auth.refused"]
    assert event[field] == value
    assert audit.verify_chain(engine) == (1, None)


def test_overlong_names_still_make_a_record(engine: Engine) -> None:
    name = repr("x" * 500)

    Auditor(engine).record("auth.refused", actor=name, target="t" * 300)

    assert audit.read_events(engine)[0]["actor"] == name
    assert audit.verify_chain(engine) == (1, None)


def test_appends_from_many_threads_stay_one_chain(engine: Engine) -> None:
    auditor = Auditor(engine)

    def append(worker: int) -> None:
        for i in range(25):
            auditor.record("load", actor=f"w{worker}", serial=i)

    threads = [threading.Thread(target=append, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert audit.verify_chain(engine) == (100, None)


def test_read_events_filters_by_kind_user_target_and_time(engine: Engine) -> None:
    auditor = Auditor(engine)
    auditor.record("tunnel.opened", actor="alice", target="web01")
    auditor.record("tunnel.closed", actor="alice", target="web01")
    auditor.record("auth.refused", actor="bob", target="db01")
    middle = audit.read_events(engine)[1]["ts"]

    def kinds(**where: str) -> list[str]:
        found = audit.read_events(engine, where=EventFilter(**where), oldest_first=True)
        return [str(e["kind"]) for e in found]

    assert kinds(kind="tunnel") == ["tunnel.opened", "tunnel.closed"]
    assert kinds(kind="tunnel.closed") == ["tunnel.closed"]
    assert kinds(kind="tun") == []
    assert kinds(user="bob") == ["auth.refused"]
    assert kinds(target="web01", since=middle) == ["tunnel.closed"]
    assert kinds(until=middle) == ["tunnel.opened"]


def test_parse_moment_reads_dates_times_and_durations() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    assert audit.parse_moment("2h", now) == "2024-05-01T10:00:00.000Z"
    assert audit.parse_moment("2024-04-30", now) == "2024-04-30T00:00:00.000Z"
    assert audit.parse_moment("2024-04-30T14:30Z") == "2024-04-30T14:30:00.000Z"
    assert audit.parse_moment("2024-04-30T14:30-02:30") == "2024-04-30T17:00:00.000Z"
    for text in ("yesterday", "2024", "0m"):
        with pytest.raises(InputError, match="is not a time"):
            audit.parse_moment(text)


def test_table_escapes_control_characters() -> None:
    event = {"seq": 1, "kind": "auth.refused", "actor": "a\nb\x1b[31m"}

    lines = audit.format_table([event])

    assert len(lines) == 2
    assert "a\\nb\\u001b[31m" in lines[1]


def test_head_is_logged_at_intervals(
    engine: Engine,
    chain: list[dict[str, object]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run_briefly() -> None:
        task = asyncio.create_task(audit.log_head(engine, 0.05))
        await asyncio.sleep(0.3)
        task.cancel()

    with caplog.at_level(logging.INFO, logger="appliance.audit"):
        asyncio.run(run_briefly())

    lines = [r.getMessage() for r in caplog.records if "audit head" in r.message]
    assert len(lines) >= 2
    assert audit.parse_head(lines[-1]) == (5, chain[4]["hash"])


@pytest.fixture
def state_path(
    database_url: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """An initialised state directory, on SQLite or PostgreSQL, whose
    engines the commands run here open are disposed of afterwards."""
    path = tmp_path / "state"
    opened = [initialize(path, name="bastion.test", database_url=database_url)]

    def open_state(args: object) -> State:
        opened.append(State.open(path))
        return opened[-1]

    monkeypatch.setattr(cli, "open_state", open_state)
    yield path
    for state in opened:
        state.engine.dispose()


def _record(path: Path, *targets: str) -> Engine:
    """Record a user.added event per target; return an engine on the store."""
    state = State.open(path)
    for name in targets:
        state.auditor.record("user.added", actor="cli", target=name)
    return state.engine


def _cli(path: Path, *args: str) -> int:
    return cli.main(["--state", str(path), *args])


def test_audit_verify_command_names_the_first_broken_event(
    state_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = _record(state_path, "alice", "bob", "carol")
    assert _cli(state_path, "audit", "verify") == 0
    assert "audit chain verified: 4 events" in capsys.readouterr().out
    _execute(engine, sa.delete(audit_events).where(audit_events.c.seq == 2))
    engine.dispose()

    assert _cli(state_path, "audit", "verify") == 1

    out = capsys.readouterr().out
    assert "audit chain broken at event 2: event 2 was removed" in out
    assert "(1 events before it verified)" in out


def test_audit_verify_command_checks_a_logged_head(
    state_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = _record(state_path, "alice")
    seq, digest = audit.read_head(engine)
    engine.dispose()
    logged = f"2024-05-01 INFO appliance.audit: audit head seq={seq} hash={digest}"

    assert _cli(state_path, "audit", "verify", "--head", logged) == 0
    assert _cli(state_path, "audit", "verify", "--head", f"{seq + 1}:{digest}") == 1

    assert "events after 2 were removed" in capsys.readouterr().out


def test_audit_show_prints_a_table_or_json_lines(
    state_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _record(state_path, "alice", "bob").dispose()

    assert _cli(state_path, "audit", "show", "--kind", "user", "--json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["target"] for line in lines] == ["alice", "bob"]

    since = ("--since", "1h")
    assert _cli(state_path, "audit", "show", *since, "--kind", "user.added") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["SEQ", "TIME", "(UTC)"]
    assert [line.split()[5] for line in table[1:]] == ["alice", "bob"]
