"""A byte sink and source on the target, and the client side of a transfer.

The server reads command lines, then moves bytes:

``hold``       it answers ``held`` and waits for the next line: an idle
               tunnel that is known to reach the target;
``sink``       it answers ``ready``, counts bytes to EOF, answers ``done N``;
``source N``   it sends N bytes (0: until the client goes) and closes.

The client half runs ``ssh -W`` (any command that relays stdin and
stdout) and times only the bytes, never the SSH handshake:
``python -m tests.bench.stream upload|download BYTES -- ssh ...`` prints
one JSON line with ``bytes`` and ``seconds``. ``serve HOST PORT`` runs
the server until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

CHUNK = 256 * 1024
_PAYLOAD = os.urandom(CHUNK)


class StreamServer(asyncio.Protocol):
    """One connection: waits for its command line, then sinks or sources."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._line = b""
        self._mode = ""
        self._received = 0
        self._left = 0
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._mode == "sink":
            self._received += len(data)
            return
        if self._mode not in ("", "hold"):
            return  # a source ignores what the client sends
        self._line += data
        while b"\n" in self._line and self._mode in ("", "hold"):
            line, _, self._line = self._line.partition(b"\n")
            self._start(line.decode().split())

    def _start(self, words: list[str]) -> None:
        assert self._transport is not None
        self._mode = words[0] if words else ""
        if self._mode == "hold":
            self._transport.write(b"held\n")
        elif self._mode == "sink":
            rest, self._line = self._line, b""
            self._received = len(rest)
            self._transport.write(b"ready\n")
        elif self._mode == "source":
            self._left = int(words[1]) if int(words[1]) else -1
            self._send()
        else:
            self._transport.close()

    def _send(self) -> None:
        """Write chunks until the transport's buffer asks for a pause."""
        assert self._transport is not None
        # A closed transport never pauses: stop there, or this loops forever.
        while self._left and not self._paused and not self._transport.is_closing():
            size = CHUNK if self._left < 0 else min(CHUNK, self._left)
            self._transport.write(_PAYLOAD if size == CHUNK else _PAYLOAD[:size])
            self._left = self._left - size if self._left > 0 else -1
        if self._left == 0:
            self._transport.close()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._mode == "source":
            self._send()

    def eof_received(self) -> bool:
        """A sink reports its count; a source keeps sending; others close."""
        if self._transport is not None and self._mode != "source":
            if self._mode == "sink":
                self._transport.write(f"done {self._received}\n".encode())
            self._transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._left = 0


async def serve(host: str, port: int) -> None:
    """Serve sinks and sources on ``host:port`` until killed."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(StreamServer, host, port, backlog=4096)
    print(f"stream server listening on {host}:{port}", flush=True)
    await server.serve_forever()


def upload(size: int, command: list[str]) -> dict[str, float]:
    """Send ``size`` bytes into ``command``; time from ready to done."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"sink\n")
    process.stdin.flush()
    if process.stdout.readline() != b"ready\n":
        raise RuntimeError("the sink did not answer: is the tunnel up?")
    started = time.monotonic()
    left = size
    while left:
        left -= process.stdin.write(_PAYLOAD if left >= CHUNK else _PAYLOAD[:left])
    process.stdin.close()
    answer = process.stdout.readline().split()
    seconds = time.monotonic() - started
    process.wait(timeout=30)
    if answer != [b"done", str(size).encode()]:
        raise RuntimeError(f"the sink answered {answer!r}, not done {size}")

    return {"bytes": size, "seconds": seconds}


def download(size: int, command: list[str]) -> dict[str, float]:
    """Read ``size`` bytes out of ``command``; time from first byte to EOF."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(f"source {size}\n".encode())
    process.stdin.close()
    fd = process.stdout.fileno()
    first = os.read(fd, CHUNK)
    started = time.monotonic()
    received = len(first)
    while chunk := os.read(fd, 1 << 20):
        received += len(chunk)
    seconds = time.monotonic() - started
    process.wait(timeout=30)
    if received != size:
        raise RuntimeError(f"received {received} bytes, not {size}")

    return {"bytes": size, "seconds": seconds}


def main(argv: list[str]) -> int:
    """``serve HOST PORT`` or ``upload|download BYTES -- COMMAND...``."""
    if argv[0] == "serve":
        asyncio.run(serve(argv[1], int(argv[2])))
        return 0
    size, command = int(argv[1]), argv[argv.index("--") + 1 :]
    transfer = upload if argv[0] == "upload" else download
    print(json.dumps(transfer(size, command)), flush=True)

    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
