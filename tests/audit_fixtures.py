"""Helpers for the audit and sink tests: syslog receivers and waiting."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.inventory import add_static_target
from tests.harness import ApplianceUnderTest, Client, SSHDTarget, cert_path
from tests.netlab import Network

#: An RFC 5424 message: PRI, version, timestamp, host, app, procid,
#: msgid, structured data, message.
RFC5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) "
    r"(?P<procid>\S+) (?P<msgid>\S+) (?P<sd>-|\[.*?\]) (?P<msg>.*)",
    re.S,
)


def parse_rfc5424(data: bytes) -> dict[str, Any]:
    """Split one RFC 5424 message; its MSG is decoded as the event JSON."""
    match = RFC5424.fullmatch(data.decode("ascii"))
    assert match, f"not an RFC 5424 message: {data!r}"
    parts: dict[str, Any] = match.groupdict()
    parts["event"] = json.loads(parts["msg"])
    return parts


def wait_until(check: Callable[[], bool], timeout: float = 10) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout}s: {check}")
        time.sleep(0.02)


@dataclass
class SyslogReceiver:
    """A syslog server on 127.0.0.1 (UDP or TCP) or a UNIX datagram socket."""

    scheme: str
    path: Path | None = None
    messages: list[bytes] = field(default_factory=list)
    _socket: socket.socket | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)

    def start(self, port: int = 0) -> SyslogReceiver:
        """Bind and serve in a thread."""
        if self.scheme == "unix":
            assert self.path is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(self.path))
        elif self.scheme == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", port))
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
        sock.settimeout(0.1)
        self._socket = sock
        serve = self._accept if self.scheme == "tcp" else self._receive
        self._spawn(serve, sock)
        return self

    @property
    def url(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        assert self._socket is not None
        return int(self._socket.getsockname()[1])

    def events(self) -> list[dict[str, Any]]:
        """The events received so far, in order."""
        return [parse_rfc5424(m)["event"] for m in list(self.messages)]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        if self._socket is not None:
            self._socket.close()

    def _spawn(self, target: Callable[[socket.socket], None], sock: Any) -> None:
        thread = threading.Thread(target=target, args=(sock,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _receive(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(sock.recv(65536))
            except TimeoutError:
                continue

    def _accept(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = sock.accept()
            except TimeoutError:
                continue
            connection.settimeout(0.1)
            self._spawn(self._read_frames, connection)

    def _read_frames(self, connection: socket.socket) -> None:
        """Read octet-counted frames: ``LENGTH SP MESSAGE``."""
        buffer = b""
        with connection:
            while not self._stop.is_set():
                try:
                    chunk = connection.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buffer += chunk
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    assert length.isdigit(), f"bad frame {buffer[:40]!r}"
                    if len(rest) < int(length):
                        break
                    self.messages.append(rest[: int(length)])
                    buffer = rest[int(length) :]


def direct_config(client: Client, target: SSHDTarget, key: Path) -> Path:
    """An ssh_config that reaches ``target`` straight, not through the bastion."""
    known_hosts = client.directory / f"known_hosts-{target.name}-{key.name}"
    known_hosts.write_text(target.known_hosts_line() + "\n")
    path = client.directory / f"ssh_config-direct-{key.name}"
    path.write_text(
        f"Host {target.name}\n  HostName {target.host.address}\n"
        f"  Port {target.port}\n  User {client.user}\n"
        f"  HostKeyAlias {target.name}\n  IdentityFile {key}\n"
        f"  CertificateFile {cert_path(key)}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {known_hosts}\n"
        "  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n"
        "  LogLevel ERROR\n"
    )
    return path


def bastion_config(appliance: ApplianceUnderTest, client: Client) -> Path:
    """An ssh_config for the bastion alone; each ssh run names its own key
    with ``-i`` and ``-o CertificateFile=``, which apply to the bastion."""
    state = appliance.state
    known_hosts = client.directory / f"known_hosts-{appliance.host.name}"
    known_hosts.write_text(state.ca.known_hosts_line(state.host_names()) + "\n")
    path = client.directory / f"ssh_config-{appliance.host.name}"
    path.write_text(
        f"Host {appliance.host.name}\n  HostName {appliance.host.address}\n"
        f"  Port {appliance.port}\n  User {client.user}\n"
        f"  HostKeyAlias {state.host_names()[0]}\n"
        f"  UserKnownHostsFile {known_hosts}\n  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n  IdentitiesOnly yes\n  ConnectTimeout 30\n"
        "  LogLevel ERROR\n"
    )
    return path


def start_web01(
    network: Network,
    appliance: ApplianceUnderTest,
    directory: Path,
    *,
    trusted: Path | None = None,
    extra_config: str = "",
) -> SSHDTarget:
    """Start a real sshd called web01 and register it as the appliance's
    target; it trusts the appliance's user CA unless told otherwise."""
    host = network.host("web01")
    sshd = SSHDTarget("web01", host, directory, trusted or appliance.user_ca_file())
    sshd.port = host.free_port(22)
    sshd.extra_config = extra_config
    sshd.start()
    add_static_target(appliance.state.engine, "web01", host.address, sshd.port)
    return sshd
