"""Where audit events go besides the database: a JSONL file and syslog.

Each sink delivers from a bounded in-memory queue on a thread of its
own, so a full disk or a syslog server that is down never blocks a
login or a tunnel, and never touches the database record, which is
written first. A sink that fails is reported once in the log and in
the audit trail, and retried with a growing pause until it works again;
if the queue fills meanwhile, the newest events are dropped from that
sink only (the database still holds them) and counted.

The JSONL file is reopened whenever its path no longer names the file
that is open (logrotate's rename-and-create), and syslog messages follow
RFC 5424: over UDP one datagram each (RFC 5426), over TCP with
octet-counting framing (RFC 6587), or to a local datagram socket such as
``/dev/log``.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from .audit import Sink, canonical
from .config import AuditSection
from .errors import ConfigError

logger = logging.getLogger(__name__)

#: Events a sink holds while it cannot deliver.
QUEUE_SIZE = 10_000
#: First and longest pause between delivery attempts, in seconds.
RETRY_FIRST, RETRY_MAX = 0.5, 30.0
#: Seconds to connect to or send to a syslog server.
SEND_TIMEOUT = 5.0

#: RFC 5424 facility 10, security/authorization (private) messages.
FACILITY_AUTHPRIV = 10
SEVERITY_WARNING, SEVERITY_NOTICE = 4, 5
REFUSALS = frozenset({"refused", "denied", "failed", "locked"})

#: Called when a sink fails or recovers: an audit kind and its fields.
Report = Callable[..., Any]


class Transport(Protocol):
    """Delivers one event, raising OSError when it cannot."""

    def send(self, event: Mapping[str, Any]) -> None:
        """Deliver ``event`` now."""

    def close(self) -> None:
        """Release the file or socket."""


def encode_line(event: Mapping[str, Any]) -> bytes:
    """One event as one line of JSON: newlines inside values are escaped."""
    return canonical(event).encode("ascii") + b"\n"


class JSONLFile:
    """Appends events to a file, reopening it after log rotation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"<JSONLFile {self.path}>"

    def send(self, event: Mapping[str, Any]) -> None:
        """Append ``event`` as one line, to whatever file the path names now."""
        fd = self._open()
        data = encode_line(event)
        while data:
            data = data[os.write(fd, data) :]

    def _open(self) -> int:
        """Return the open file, reopened if the path was rotated away."""
        try:
            now = os.stat(self.path)
            current: tuple[int, int] | None = (now.st_dev, now.st_ino)
        except FileNotFoundError:
            current = None
        if self._fd is not None and current == self._identity:
            return self._fd
        self.close()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o640)
        opened = os.fstat(fd)
        self._fd, self._identity = fd, (opened.st_dev, opened.st_ino)

        return fd

    def close(self) -> None:
        """Close the file, if open."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def format_rfc5424(
    event: Mapping[str, Any], app_name: str, hostname: str, procid: int
) -> bytes:
    """An RFC 5424 message whose MSG is the event's JSON line.

    Header fields are held to printable ASCII and their lengths; the
    event itself is ASCII-only JSON, so nothing in it can end the message.
    """
    outcome = str(event.get("outcome", ""))
    severity = SEVERITY_WARNING if outcome in REFUSALS else SEVERITY_NOTICE
    header = " ".join(
        (
            f"<{FACILITY_AUTHPRIV * 8 + severity}>1",
            _header_field(str(event.get("ts", "")), 32),
            _header_field(hostname, 255),
            _header_field(app_name, 48),
            _header_field(str(procid), 128),
            _header_field(str(event.get("kind", "")), 32),
            "-",
        )
    )

    return f"{header} {canonical(event)}".encode("ascii")


def _header_field(value: str, size: int) -> str:
    """A header field: printable ASCII without spaces, or ``-`` when empty."""
    cleaned = "".join(ch if "!" <= ch <= "~" else "_" for ch in value)[:size]

    return cleaned or "-"


class SyslogClient:
    """Sends RFC 5424 messages over UDP, TCP or a local datagram socket."""

    def __init__(self, url: str, app_name: str, hostname: str) -> None:
        self.scheme, self.address = parse_syslog_url(url)
        self.url = url
        self._app_name = app_name
        self._hostname = hostname
        self._socket: socket.socket | None = None

    def __repr__(self) -> str:
        return f"<SyslogClient {self.url}>"

    def send(self, event: Mapping[str, Any]) -> None:
        """Send one message, connecting first if needed."""
        message = format_rfc5424(event, self._app_name, self._hostname, os.getpid())
        if self.scheme == "tcp":
            message = b"%d %s" % (len(message), message)
        sock = self._socket or self._connect()
        try:
            sock.sendall(message)
        except OSError:
            self.close()
            raise

    def _connect(self) -> socket.socket:
        """Open the socket the URL names."""
        if self.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.settimeout(SEND_TIMEOUT)
            try:
                sock.connect(self.address[0])
            except OSError:
                sock.close()
                raise
        elif self.scheme == "tcp":
            sock = socket.create_connection(self.address, timeout=SEND_TIMEOUT)
        else:
            sock = _udp_socket(self.address)
        self._socket = sock

        return sock

    def close(self) -> None:
        """Close the socket; the next send reconnects."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _udp_socket(address: tuple[str, int]) -> socket.socket:
    """A connected UDP socket, so a closed port shows as an error."""
    family, kind, proto, _, where = socket.getaddrinfo(
        address[0], address[1], type=socket.SOCK_DGRAM
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.connect(where)
    except OSError:
        sock.close()
        raise

    return sock


def parse_syslog_url(url: str) -> tuple[str, tuple[str, int]]:
    """Split ``udp://host:port``, ``tcp://host:port`` or ``unix:///path``."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            raise ConfigError(
                f"audit.syslog: {url!r} needs an absolute path: unix:///dev/log"
            )
        return "unix", (parts.path, 0)
    if parts.scheme not in ("udp", "tcp") or not parts.hostname:
        raise ConfigError(
            f"audit.syslog: {url!r} is not udp://HOST:PORT, tcp://HOST:PORT "
            "or unix:///PATH"
        )
    try:
        port = parts.port or 514
    except ValueError:
        raise ConfigError(f"audit.syslog: {url!r} has a bad port") from None

    return parts.scheme, (parts.hostname, port)


class QueuedSink:
    """Delivers events through a transport from a thread of its own.

    :meth:`submit` never blocks: it queues the event, or counts it as
    dropped when the queue is full. The thread retries a failing
    transport with a pause that doubles up to :data:`RETRY_MAX`.
    """

    def __init__(
        self,
        name: str,
        transport: Transport,
        *,
        report: Report | None = None,
        size: int = QUEUE_SIZE,
        retry_first: float = RETRY_FIRST,
    ) -> None:
        self.name = name
        self.dropped = 0
        self.failing_since: float | None = None
        self._transport = transport
        self._report = report
        self._size = size
        self._retry_first = retry_first
        self._lock = threading.Lock()
        self._queue: queue.Queue[Mapping[str, Any]] = queue.Queue(size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._at_exit = False

    def __repr__(self) -> str:
        return f"<QueuedSink {self.name}>"

    def submit(self, event: Mapping[str, Any]) -> None:
        """Queue ``event``; never blocks, never raises."""
        self._ensure_thread()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            with self._lock:
                self.dropped += 1

    @property
    def pending(self) -> int:
        """Events queued or being sent."""
        return self._queue.unfinished_tasks

    def close(self, timeout: float) -> None:
        """Deliver what is queued within ``timeout`` seconds, then stop."""
        if self._stop.is_set() and not self._alive():
            return
        deadline = time.monotonic() + timeout
        while self.pending and self._alive() and self.failing_since is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self._stop.set()
        if self._alive():
            assert self._thread is not None
            self._thread.join(max(0.0, deadline - time.monotonic()) + 1)
        if self.pending:
            logger.warning(
                "Audit sink %s: %d events not delivered at exit; the "
                "database holds them (jit-bastion audit show)",
                self.name,
                self.pending,
            )
        self._transport.close()

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _ensure_thread(self) -> None:
        """Start the thread on first use, and again in a forked child."""
        if self._pid == os.getpid() and self._alive():
            return
        with self._lock:
            if self._pid == os.getpid() and self._alive():
                return
            if self._pid and self._pid != os.getpid():
                # A forked child inherits a queue no thread serves.
                self._queue = queue.Queue(self._size)
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"audit-sink-{self.name}", daemon=True
            )
            self._thread.start()
            if not self._at_exit:
                self._at_exit = True
                atexit.register(self.close, 2.0)

    def _run(self) -> None:
        """Take events off the queue and deliver each until it goes through."""
        while not self._stop.is_set():
            try:
                event = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._deliver(event)
            finally:
                self._queue.task_done()

    def _deliver(self, event: Mapping[str, Any]) -> None:
        """Send one event, retrying with a growing pause; give up on stop."""
        pause = self._retry_first
        while True:
            try:
                self._transport.send(event)
            # Any failure, not only OSError: a sink must never die quietly.
            except Exception as exc:
                self._failed(exc)
                if self._stop.wait(pause):
                    return
                pause = min(pause * 2, RETRY_MAX)
                continue
            self._recovered()
            return

    def _failed(self, exc: Exception) -> None:
        """Report the first failure of an outage."""
        if self.failing_since is not None:
            return
        self.failing_since = time.time()
        error = str(exc) or type(exc).__name__
        logger.warning(
            "Audit sink %s failed: %s; the database holds every event, retrying",
            self.name,
            error,
        )
        self._notify("audit.sink.failed", error=error)

    def _recovered(self) -> None:
        """Report the end of an outage, with what it cost."""
        if self.failing_since is None:
            return
        seconds = round(time.time() - self.failing_since, 1)
        self.failing_since = None
        with self._lock:
            dropped, self.dropped = self.dropped, 0
        logger.info(
            "Audit sink %s works again after %.1fs; %d events dropped from it",
            self.name,
            seconds,
            dropped,
        )
        self._notify("audit.sink.recovered", seconds=seconds, dropped=dropped)

    def _notify(self, kind: str, **fields: Any) -> None:
        """Tell the audit trail; a failure here is only logged."""
        if self._report is None:
            return
        try:
            self._report(kind, actor="appliance", target=self.name, **fields)
        except Exception:
            logger.exception("Could not record %s for sink %s", kind, self.name)


def build_sinks(
    section: AuditSection, hostname: str, report: Report | None = None
) -> list[Sink]:
    """Make the sinks that ``[audit]`` turns on; none when both are empty."""
    sinks: list[Sink] = []
    if section.jsonl_path:
        path = Path(section.jsonl_path)
        if not path.is_absolute():
            raise ConfigError(f"audit.jsonl_path: {str(path)!r} must be absolute")
        sinks.append(QueuedSink("jsonl", JSONLFile(path), report=report))
    if section.syslog:
        client = SyslogClient(section.syslog, section.syslog_app_name, hostname)
        sinks.append(QueuedSink("syslog", client, report=report))

    return sinks
