"""Test hosts with their own addresses: network namespaces on one bridge.

As root, each host is a network namespace joined by a veth pair to a
bridge in a namespace of its own, on 10.77.0.0/24, an address range that
exists only inside these namespaces. Without root every host is
127.0.0.1 and services take free loopback ports instead. Every command
a test runs in a host is bounded by a timeout.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.77.0"
IS_ROOT = os.geteuid() == 0


@dataclass
class Host:
    """One test host: a namespace (as root) or the loopback interface."""

    name: str
    address: str
    netns: str | None = None
    _next_port: int = field(default=20000, repr=False)

    def command(self, argv: list[str]) -> list[str]:
        """Return ``argv`` wrapped to run inside this host."""
        if self.netns is None:
            return list(argv)
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self, argv: list[str], timeout: float = 30, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in this host, always with a timeout."""
        wrapped = ["timeout", "-k", "2", str(int(timeout)), *argv]
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            self.command(wrapped),
            capture_output=True,
            text=True,
            timeout=timeout + 5,
            **kwargs,
        )

    def popen(
        self, argv: list[str], log: Path, **kwargs: object
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in this host, its output to ``log``."""
        with log.open("ab") as out:
            return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
                self.command(argv), stdout=out, stderr=subprocess.STDOUT, **kwargs
            )

    def free_port(self, preferred: int) -> int:
        """A port to listen on: ``preferred`` in a namespace, else a free one."""
        if self.netns is not None:
            return preferred
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


class Network:
    """Makes hosts on demand and removes them all at the end."""

    def __init__(self) -> None:
        self.tag = f"jb{os.getpid()}"
        self._hosts: dict[str, Host] = {}
        self._lan: str | None = None

    def host(self, name: str) -> Host:
        """Return the host called ``name``, creating it on first use."""
        if name not in self._hosts:
            self._hosts[name] = (
                self._create(name) if IS_ROOT else Host(name, "127.0.0.1")
            )
        return self._hosts[name]

    def _create(self, name: str) -> Host:
        if self._lan is None:
            self._lan = self._make_lan()
        number = len(self._hosts) + 2
        netns = f"{self.tag}-{name}"
        outside, inside = f"{self.tag}v{number}", f"{self.tag}p{number}"
        address = f"{SUBNET}.{number}"
        _ip("netns", "add", netns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", outside, "netns", self._lan)
        _ip("link", "set", inside, "netns", netns)
        _ip("-n", self._lan, "link", "set", outside, "master", "br0", "up")
        _ip("-n", netns, "link", "set", inside, "name", "eth0")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")

        return Host(name, address, netns)

    def _make_lan(self) -> str:
        lan = f"{self.tag}-lan"
        _ip("netns", "add", lan)
        _ip("-n", lan, "link", "add", "br0", "type", "bridge")
        _ip("-n", lan, "link", "set", "br0", "up")
        return lan

    def close(self) -> None:
        """Delete every namespace this network made."""
        for host in self._hosts.values():
            if host.netns:
                subprocess.run(["ip", "netns", "del", host.netns], check=False)
        if self._lan:
            subprocess.run(["ip", "netns", "del", self._lan], check=False)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def remove_stale_namespaces() -> None:
    """Remove namespaces left by earlier runs whose process is gone.

    Runs that are still alive (another suite on the same machine) keep
    theirs: the tag holds the pid of the run that made them.
    """
    if not IS_ROOT:
        return
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    for line in listing.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(r"jb(\d+)-\w+", name)
        if match and not Path(f"/proc/{match[1]}").exists():
            subprocess.run(["ip", "netns", "del", name], check=False)


def wait_for_line(
    process: subprocess.Popen[bytes], log: Path, needle: str, timeout: float = 20
) -> None:
    """Wait until ``needle`` appears in ``log``; fail fast if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if needle in text:
            return
        if process.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.returncode} before {needle!r}:\n{text}"
            )
        time.sleep(0.05)
    raise TimeoutError(f"{needle!r} did not appear in {log} within {timeout}s")
