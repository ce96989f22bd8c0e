"""Audit sinks: a JSONL file that follows rotation, syslog over UDP, TCP
and a UNIX socket, and sinks that fail without blocking or losing."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from appliance import audit, store
from appliance.audit import Auditor
from appliance.errors import ConfigError
from appliance.sinks import (
    JSONLFile,
    QueuedSink,
    SyslogClient,
    build_sinks,
    format_rfc5424,
)
from appliance.state import State, initialize
from tests.audit_fixtures import (
    SyslogReceiver,
    parse_rfc5424,
    wait_until,
)
from tests.harness import ApplianceUnderTest, Client, SSHDTarget, keygen, sign

FORGED = '{"kind":"auth.accepted","actor":"root"}'


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite store."""
    engine = store.create_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    store.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[dict[str, SyslogReceiver]]:
    """A syslog receiver of each kind."""
    made = {
        "udp": SyslogReceiver("udp").start(),
        "tcp": SyslogReceiver("tcp").start(),
        "unix": SyslogReceiver("unix", tmp_path / "log").start(),
    }
    yield made
    for receiver in made.values():
        receiver.stop()


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_file_is_reopened_after_rotation(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = QueuedSink("jsonl", JSONLFile(path))
    auditor = Auditor(engine, [sink])
    auditor.record("one", actor="alice")
    wait_until(lambda: sink.pending == 0)
    path.rename(tmp_path / "audit.jsonl.1")

    auditor.record("two", actor="alice")
    auditor.record("three", actor="alice")
    auditor.close()

    assert [e["kind"] for e in _lines(tmp_path / "audit.jsonl.1")] == ["one"]
    assert [e["kind"] for e in _lines(path)] == ["two", "three"]
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_jsonl_lines_are_the_chained_events(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    auditor = Auditor(engine, [QueuedSink("jsonl", JSONLFile(path))])
    recorded = [
        auditor.record("auth.refused", key_id=f"x\n{FORGED}", actor="a\r\nb"),
        auditor.record("tunnel.opened", actor="alice"),
    ]
    auditor.close()

    lines = _lines(path)

    assert lines == recorded
    for line in lines:
        body = {k: v for k, v in line.items() if k != "hash"}
        assert audit.event_hash(audit.canonical(body)) == line["hash"]


@pytest.mark.parametrize("scheme", ["udp", "tcp", "unix"])
def test_syslog_messages_follow_rfc5424(
    engine: Engine, receivers: dict[str, SyslogReceiver], scheme: str
) -> None:
    receiver = receivers[scheme]
    client = SyslogClient(receiver.url, "jit-bastion", "bastion.test")
    auditor = Auditor(engine, [QueuedSink("syslog", client)])

    accepted = auditor.record("tunnel.opened", actor="alice", outcome="opened")
    refused = auditor.record("auth.refused", key_id=f"k\n{FORGED}", outcome="refused")
    auditor.close()

    wait_until(lambda: len(receiver.messages) == 2)
    first, second = (parse_rfc5424(m) for m in receiver.messages)
    assert first["pri"] == str(10 * 8 + 5)
    assert second["pri"] == str(10 * 8 + 4)
    assert (first["ts"], first["host"], first["app"]) == (
        accepted["ts"],
        "bastion.test",
        "jit-bastion",
    )
    assert first["procid"] == str(os.getpid())
    assert (first["msgid"], second["msgid"]) == ("tunnel.opened", "auth.refused")
    assert (first["event"], second["event"]) == (accepted, refused)


def test_syslog_header_fields_stay_in_their_grammar() -> None:
    event = {"kind": "a b\nc" * 20, "ts": "2024-05-01T00:00:00.000Z"}

    message = format_rfc5424(event, "app name", "", 7)

    parts = parse_rfc5424(message)
    assert parts["host"] == "-"
    assert parts["app"] == "app_name"
    assert parts["msgid"] == ("a_b_c" * 20)[:32]
    assert b"\n" not in message


def test_dead_syslog_server_blocks_nothing_and_loses_nothing(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    port = _unused_port()
    reports: list[str] = []
    sink = QueuedSink(
        "syslog",
        SyslogClient(f"tcp://127.0.0.1:{port}", "jit-bastion", "b"),
        report=lambda kind, **_: reports.append(kind),
        retry_first=0.05,
    )
    auditor = Auditor(engine, [sink])

    with caplog.at_level(logging.WARNING, logger="appliance.sinks"):
        started = time.monotonic()
        for i in range(200):
            auditor.record("tunnel.opened", serial=i)
        elapsed = time.monotonic() - started
        wait_until(lambda: sink.failing_since is not None)

    assert elapsed < 10, f"200 records took {elapsed:.1f}s with syslog down"
    assert audit.verify_chain(engine) == (200, None)
    assert "Audit sink syslog failed" in caplog.text
    receiver = SyslogReceiver("tcp").start(port)
    try:
        wait_until(lambda: len(receiver.messages) == 200, timeout=20)
        assert [e["serial"] for e in receiver.events()] == list(range(200))
        wait_until(lambda: reports == ["audit.sink.failed", "audit.sink.recovered"])
    finally:
        auditor.close()
        receiver.stop()


def test_syslog_server_that_never_reads_blocks_nothing(engine: Engine) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    url = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    sink = QueuedSink("syslog", SyslogClient(url, "jit-bastion", "b"), size=100)
    auditor = Auditor(engine, [sink])
    padding = "p" * 20_000

    started = time.monotonic()
    for i in range(300):
        auditor.record("tunnel.opened", serial=i, padding=padding)
    elapsed = time.monotonic() - started

    assert elapsed < 10, f"300 records took {elapsed:.1f}s with syslog stuck"
    assert sink.dropped > 0
    assert audit.verify_chain(engine) == (300, None)
    listener.close()
    auditor.close(timeout=0.1)


class Flaky:
    """A transport that fails until told to work."""

    def __init__(self) -> None:
        self.working = False
        self.sent: list[Mapping[str, Any]] = []

    def send(self, event: Mapping[str, Any]) -> None:
        if not self.working:
            raise OSError("No space left on device")
        self.sent.append(event)

    def close(self) -> None:
        pass


def test_full_queue_drops_for_the_sink_only_and_says_how_many(
    engine: Engine,
) -> None:
    flaky = Flaky()
    reported: list[dict[str, Any]] = []
    sink = QueuedSink(
        "flaky",
        flaky,
        size=5,
        retry_first=0.02,
        report=lambda kind, **fields: reported.append({"kind": kind, **fields}),
    )
    auditor = Auditor(engine, [sink])
    for i in range(20):
        auditor.record("tunnel.opened", serial=i)
    wait_until(lambda: sink.failing_since is not None)

    flaky.working = True

    wait_until(lambda: len(reported) == 2)
    auditor.close()
    assert reported[0] == {
        "kind": "audit.sink.failed",
        "actor": "appliance",
        "target": "flaky",
        "error": "No space left on device",
    }
    assert reported[1]["dropped"] == 20 - len(flaky.sent)
    assert 5 <= len(flaky.sent) <= 6
    assert audit.verify_chain(engine) == (20, None)


def test_state_wires_the_configured_sinks(
    tmp_path: Path,
    receivers: dict[str, SyslogReceiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    initialize(tmp_path / "state", name="bastion.test").engine.dispose()
    jsonl = tmp_path / "audit.jsonl"
    monkeypatch.setenv("JIT_BASTION_AUDIT_JSONL_PATH", str(jsonl))
    monkeypatch.setenv("JIT_BASTION_AUDIT_SYSLOG", receivers["udp"].url)
    state = State.open(tmp_path / "state")

    event = state.auditor.record("user.added", actor="cli", target="alice")
    state.auditor.close()
    state.engine.dispose()

    assert _lines(jsonl) == [event]
    wait_until(lambda: receivers["udp"].events() == [event])


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("SYSLOG", "http://x:514", "is not udp://HOST:PORT"),
        ("SYSLOG", "udp://x:99999", "has a bad port"),
        ("SYSLOG", "unix://dev/log", "needs an absolute path"),
        ("SYSLOG", "unix:log", "needs an absolute path"),
        ("JSONL_PATH", "audit.jsonl", "must be absolute"),
    ],
)
def test_bad_sink_settings_are_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    value: str,
    message: str,
) -> None:
    initialize(tmp_path / "state", name="bastion.test").engine.dispose()
    monkeypatch.setenv(f"JIT_BASTION_AUDIT_{setting}", value)

    with pytest.raises(ConfigError, match=message):
        State.open(tmp_path / "state")


def test_no_sinks_when_none_are_configured(tmp_path: Path) -> None:
    from appliance.config import AuditSection

    assert build_sinks(AuditSection(), "b") == []


def test_bastion_events_reach_both_sinks_escaped(
    appliance: ApplianceUnderTest,
    target: SSHDTarget,
    client: Client,
    alice: str,
    tmp_path: Path,
) -> None:
    jsonl = tmp_path / "bastion.jsonl"
    receiver = SyslogReceiver("unix", tmp_path / "syslog.sock").start()
    key = keygen(client.directory / "id")
    appliance.issue(alice, "web01", key)
    appliance.start(audit_jsonl_path=str(jsonl), audit_syslog=receiver.url)
    config = client.config(appliance, key, [target])
    assert client.ssh(config, "web01", "true").returncode == 0
    ca = appliance.state_path / "ca" / "user_ca"
    sign(ca, key, principals=alice, key_id=f"{alice}/x\n{FORGED}", serial=77)

    refused = client.ssh(config, "web01", "true")

    assert refused.returncode == 255
    try:
        wait_until(lambda: any(e["kind"] == "auth.refused" for e in _lines(jsonl)))
        wait_until(lambda: any(e["kind"] == "tunnel.closed" for e in _lines(jsonl)))
        stored = {e["seq"]: e for e in appliance.events()}
        lines = _lines(jsonl)
        assert all(stored[e["seq"]] == e for e in lines)
        forged = [e for e in lines if e.get("serial") == 77]
        assert forged[0]["key_id"] == f"{alice}/x\n{FORGED}"
        assert forged[0]["kind"] == "auth.refused"
        assert not any(e.get("actor") == "root" for e in lines)
        wait_until(lambda: len(receiver.events()) >= len(lines))
        assert all(stored[e["seq"]] == e for e in receiver.events())
    finally:
        receiver.stop()


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
