"""Many tunnels at once, driven from the client host.

``python -m tests.bench.crowd CONFIG HOST:PORT CONNECTIONS TUNNELS`` starts
CONNECTIONS ``ssh -N -L`` processes through the hop named ``hop`` in
CONFIG, each forwarding one local port to HOST:PORT, and opens TUNNELS
TCP connections spread over those ports: every connection is one
``direct-tcpip`` channel through the hop. Each tunnel is confirmed end to
end (``hold``/``held``, see :mod:`tests.bench.stream`) and then left idle.

It then reads commands on stdin and answers one JSON line each:

``active COUNT SECONDS WARMUP``
                          COUNT tunnels, spread over the connections,
                          stream from the target; answers the bytes each
                          one received in SECONDS after WARMUP seconds,
                          and the total with the warm-up, then closes them;
``close``                 closes everything and exits.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field

FIRST_PORT = 30000
OPENING = 32  # tunnels being opened at once
CONNECTING = 8  # ssh connections being set up at once


@dataclass
class Tunnel:
    """One TCP connection to a forwarded port, and what it has received."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def drain_forever(self) -> None:
        """Count every byte the target sends until the tunnel closes."""
        while chunk := await self.reader.read(1 << 16):
            self.received += len(chunk)

    def close(self) -> None:
        if self.task:
            self.task.cancel()
        self.writer.close()


async def open_tunnel(port: int, deadline: float) -> Tunnel:
    """Connect to a forwarded port and confirm the far end answers."""
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            pass  # ssh is not listening yet
        else:
            writer.write(b"hold\n")
            try:
                if await asyncio.wait_for(reader.readline(), 10) == b"held\n":
                    return Tunnel(reader, writer)
            except (OSError, TimeoutError):
                pass
            writer.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no tunnel through local port {port}")
        await asyncio.sleep(0.05)


def start_ssh(config: str, dest: str, port: int) -> subprocess.Popen[bytes]:
    """One ssh connection to the hop with one local forward."""
    argv = ["ssh", "-F", config, "-N", "-o", "ExitOnForwardFailure=yes"]
    argv += ["-L", f"127.0.0.1:{port}:{dest}", "hop"]

    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


async def connect_all(
    config: str, dest: str, connections: int
) -> tuple[list[subprocess.Popen[bytes]], list[Tunnel]]:
    """Start the ssh connections, each confirmed by its first tunnel."""
    limit = asyncio.Semaphore(CONNECTING)
    processes: list[subprocess.Popen[bytes]] = []

    async def one(port: int) -> Tunnel:
        async with limit:
            processes.append(start_ssh(config, dest, port))
            return await open_tunnel(port, time.monotonic() + 60)

    ports = range(FIRST_PORT, FIRST_PORT + connections)
    firsts = await asyncio.gather(*(one(port) for port in ports))

    return processes, list(firsts)


async def open_rest(connections: int, count: int) -> list[Tunnel]:
    """Open ``count`` more tunnels, round robin over the forwarded ports."""
    limit = asyncio.Semaphore(OPENING)

    async def one(number: int) -> Tunnel:
        async with limit:
            port = FIRST_PORT + number % connections
            return await open_tunnel(port, time.monotonic() + 60)

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def stream(
    tunnels: list[Tunnel], count: int, seconds: float, warm_up: float
) -> tuple[list[int], int]:
    """Make ``count`` tunnels stream; return bytes each got in ``seconds``,
    and all they got, warm-up included."""
    step = max(1, len(tunnels) // count)
    active = tunnels[::step][:count]
    for tunnel in active:
        tunnel.writer.write(b"source 0\n")
        tunnel.task = asyncio.create_task(tunnel.drain_forever())
    await asyncio.sleep(warm_up)
    before = [t.received for t in active]
    await asyncio.sleep(seconds)
    counts = [t.received - b for t, b in zip(active, before, strict=True)]
    total = sum(t.received for t in active)
    for tunnel in active:
        tunnel.close()
        tunnels.remove(tunnel)

    return counts, total


async def read_command() -> list[str]:
    """The next command line from stdin."""
    line = await asyncio.to_thread(sys.stdin.readline)
    return line.split() or ["close"]


def answer(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def run(config: str, dest: str, connections: int, count: int) -> None:
    """Open the crowd, answer commands, close everything."""
    started = time.monotonic()
    processes, tunnels = await connect_all(config, dest, connections)
    tunnels += await open_rest(connections, count - connections)
    answer(event="ready", tunnels=len(tunnels), seconds=time.monotonic() - started)
    try:
        while (command := await read_command())[0] == "active":
            count, seconds, warm_up = int(command[1]), *map(float, command[2:4])
            counts, total = await stream(tunnels, count, seconds, warm_up)
            answer(event="active", bytes=counts, total=total)
    finally:
        for tunnel in tunnels:
            tunnel.close()
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
    answer(event="closed")


def main(argv: list[str]) -> int:
    """``CONFIG HOST:PORT CONNECTIONS TUNNELS``."""
    config, dest, connections, count = argv[0], argv[1], int(argv[2]), int(argv[3])
    asyncio.run(run(config, dest, connections, count))

    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
