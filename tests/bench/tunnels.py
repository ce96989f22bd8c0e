"""Tunnels through each hop: throughput, CPU per byte, setup, crowds.

Every measurement runs the same client with the same ssh_config (but
for the hop's address) against the same target, and takes turns: in
each round every hop runs once, and the hop that goes first rotates.
CPU is the hop's process tree from ``/proc`` (see :mod:`.proc`), read
after sshd has reaped the connection's children.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .lab import REPO, Hop, Lab, write_client_config
from .proc import read_usage, wait_for_no_children
from .report import (
    Figure,
    Row,
    at_least_ratio,
    at_most,
    at_most_ratio,
)

MB = 1_000_000
GB = 1_000_000_000
#: Time for the hop to finish its bookkeeping (audit writes) after a run.
SETTLE = 0.3


@dataclass(frozen=True)
class TunnelSettings:
    """How much each tunnel measurement does."""

    size: int = 200 * MB
    rounds: int = 5
    setup_runs: int = 30
    connections: int = 100
    tunnels: int = 1000
    active: int = 200
    idle_seconds: float = 10
    active_seconds: float = 5
    settle_seconds: float = 2


def rotate(hops: Sequence[Hop], turn: int) -> Iterator[Hop]:
    """The hops in turn order: who goes first changes every round."""
    for index in range(len(hops)):
        yield hops[(turn + index) % len(hops)]


def destination(hop: Hop) -> str:
    """``host:port`` of the stream server as this hop is asked for it."""
    return f"{hop.stream_dest[0]}:{hop.stream_dest[1]}"


def negotiated_cipher(ssh_log: str) -> str:
    """The cipher ssh and the hop agreed on, from ``ssh -v``'s output."""
    for line in ssh_log.splitlines():
        if "kex: server->client cipher:" in line:
            return line.split("cipher:")[1].split()[0]
    raise RuntimeError(f"no cipher in the output of ssh -v:\n{ssh_log}")


@dataclass(frozen=True)
class Transfer:
    """One tunnel's transfer: its rate, the hop's CPU, the cipher used."""

    rate: float
    cpu_per_gb: float
    cipher: str


def transfer(lab: Lab, hop: Hop, config: Path, direction: str, size: int) -> Transfer:
    """Move ``size`` bytes one way through ``hop`` and measure it."""
    before = read_usage(hop.pid).cpu
    ssh = ["ssh", "-v", "-F", str(config), "-W", destination(hop), "hop"]
    argv = [sys.executable, "-m", "tests.bench.stream", direction, str(size), "--"]
    result = lab.client.run([*argv, *ssh], timeout=300, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"{direction} through {hop.label} failed:\n{result.stderr}")
    seconds = json.loads(result.stdout)["seconds"]
    time.sleep(SETTLE)
    wait_for_no_children(hop.pid)
    cpu = read_usage(hop.pid).cpu - before

    return Transfer(
        size / MB / seconds, cpu / (size / GB), negotiated_cipher(result.stderr)
    )


def measure_throughput(
    lab: Lab, settings: TunnelSettings, cipher: str | None
) -> list[Row]:
    """One tunnel each way: MB/s and the hop's CPU seconds per GB."""
    configs = {
        hop.label: write_client_config(lab, hop, "stream01", cipher) for hop in lab.hops
    }
    samples: dict[tuple[str, str, str], list[float]] = {}
    used = set()
    for turn in range(settings.rounds):
        for direction in ("upload", "download"):
            for hop in rotate(lab.hops, turn):
                done = transfer(lab, hop, configs[hop.label], direction, settings.size)
                samples.setdefault((hop.label, direction, "rate"), []).append(done.rate)
                samples.setdefault((hop.label, direction, "cpu"), []).append(
                    done.cpu_per_gb
                )
                used.add(done.cipher)
    if len(used) != 1:
        raise RuntimeError(f"the hops negotiated different ciphers: {used}")
    name = used.pop() + ("" if cipher else " (client default)")

    return [
        _row(lab, samples, direction, metric, name, settings.size)
        for metric in ("rate", "cpu")
        for direction in ("upload", "download")
    ]


def _row(
    lab: Lab,
    samples: dict[tuple[str, str, str], list[float]],
    direction: str,
    metric: str,
    cipher: str,
    size: int,
) -> Row:
    figures = {
        hop.label: Figure.of(samples[hop.label, direction, metric]) for hop in lab.hops
    }
    if metric == "rate":
        return Row(
            f"Tunnel throughput, {direction} {size // MB} MB",
            "MB/s",
            cipher,
            figures,
            at_least_ratio(0.95),
        )
    return Row(
        f"Hop CPU per GB, {direction}",
        "s/GB",
        cipher,
        figures,
        at_most_ratio(1.5),
        digits=2,
    )


def measure_setup(lab: Lab, settings: TunnelSettings, cipher: str | None) -> list[Row]:
    """``ssh web01 true`` through each hop: p50, p95, hop CPU per login."""
    configs = {
        hop.label: write_client_config(lab, hop, "web01", cipher) for hop in lab.hops
    }
    times: dict[str, list[float]] = {hop.label: [] for hop in lab.hops}
    cpu: dict[str, list[float]] = {hop.label: [] for hop in lab.hops}
    for turn in range(settings.setup_runs):
        for hop in rotate(lab.hops, turn):
            before = read_usage(hop.pid).cpu
            started = time.monotonic()
            result = lab.client.run(
                ["ssh", "-F", str(configs[hop.label]), "web01", "true"]
            )
            times[hop.label].append((time.monotonic() - started) * 1000)
            if result.returncode != 0:
                raise RuntimeError(f"ssh through {hop.label} failed:\n{result.stderr}")
            time.sleep(SETTLE)
            wait_for_no_children(hop.pid)
            cpu[hop.label].append((read_usage(hop.pid).cpu - before) * 1000)
    label = cipher or "client default"

    return [
        Row(
            "Connection setup p50, ssh -J web01 true",
            "ms",
            label,
            {k: Figure.of(v) for k, v in times.items()},
            at_most_ratio(1.0),
            digits=0,
        ),
        Row(
            "Connection setup p95",
            "ms",
            label,
            {k: Figure(percentile(v, 95)) for k, v in times.items()},
            digits=0,
        ),
        Row(
            "Hop CPU per connection",
            "ms",
            label,
            {k: Figure.of(v) for k, v in cpu.items()},
            digits=0,
        ),
    ]


def percentile(samples: Sequence[float], percent: int) -> float:
    """The ``percent`` percentile, interpolated between samples."""
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[percent - 1]


@dataclass(frozen=True)
class CrowdResult:
    """What one hop showed with many tunnels open."""

    rss_before: float
    rss: float
    pss: float
    idle_cpu: float
    active_rate: float
    slowest_share: float
    active_cpu_per_gb: float


def measure_crowds(lab: Lab, settings: TunnelSettings, cipher: str) -> list[Row]:
    """Many idle tunnels, then some of them streaming, through each hop."""
    results = {hop.label: crowd(lab, hop, settings, cipher) for hop in lab.hops}
    tunnels, active = settings.tunnels, settings.active
    over = f"{tunnels:,} tunnels over {settings.connections} connections"

    def figures(field: str) -> dict[str, Figure]:
        return {label: Figure(getattr(r, field)) for label, r in results.items()}

    return [
        Row("Memory before the tunnels, RSS", "MB", cipher, figures("rss_before")),
        Row(
            f"Memory with {over}, RSS",
            "MB",
            cipher,
            figures("rss"),
            at_most(256),
            note="",
        ),
        Row(f"Memory with {over}, PSS", "MB", cipher, figures("pss")),
        Row(
            f"Idle CPU with {over}",
            "% of a core",
            cipher,
            figures("idle_cpu"),
            digits=2,
        ),
        Row(
            f"{active} tunnels streaming at once, total",
            "MB/s",
            cipher,
            figures("active_rate"),
        ),
        Row(
            f"{active} tunnels streaming, slowest tunnel's share of a fair share",
            "fraction",
            cipher,
            figures("slowest_share"),
            digits=2,
        ),
        Row(
            f"Hop CPU per GB, {active} tunnels streaming",
            "s/GB",
            cipher,
            figures("active_cpu_per_gb"),
            at_most_ratio(1.5),
            digits=2,
        ),
    ]


def crowd(lab: Lab, hop: Hop, settings: TunnelSettings, cipher: str) -> CrowdResult:
    """Open the crowd through ``hop``, watch it idle, then stream."""
    before = read_usage(hop.pid, memory=True)
    config = write_client_config(lab, hop, "stream01", cipher)
    argv = [sys.executable, "-m", "tests.bench.crowd", str(config), destination(hop)]
    argv += [str(settings.connections), str(settings.tunnels)]
    driver = subprocess.Popen(
        lab.client.command(argv),
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        return _watch(hop, driver, settings, before.rss)
    finally:
        _stop_driver(driver)


def _watch(
    hop: Hop, driver: subprocess.Popen[str], settings: TunnelSettings, rss_before: int
) -> CrowdResult:
    ready = _answer(driver)
    if ready.get("tunnels") != settings.tunnels:
        raise RuntimeError(f"the crowd through {hop.label} did not open: {ready}")
    time.sleep(settings.settle_seconds)
    idle_start = read_usage(hop.pid)
    time.sleep(settings.idle_seconds)
    idle_end = read_usage(hop.pid, memory=True)
    warm_up = settings.settle_seconds / 2
    _command(driver, f"active {settings.active} {settings.active_seconds} {warm_up}")
    answer = _answer(driver)
    active_cpu = read_usage(hop.pid).cpu - idle_end.cpu
    streamed: list[int] = answer["bytes"]  # type: ignore[assignment]
    total = sum(streamed)
    fair = total / len(streamed)

    return CrowdResult(
        rss_before=rss_before / MB,
        rss=idle_end.rss / MB,
        pss=idle_end.pss / MB,
        idle_cpu=100 * (idle_end.cpu - idle_start.cpu) / settings.idle_seconds,
        active_rate=total / MB / settings.active_seconds,
        slowest_share=min(streamed) / fair if fair else 0.0,
        active_cpu_per_gb=active_cpu / (int(answer["total"]) / GB),  # type: ignore[call-overload]
    )


def _command(driver: subprocess.Popen[str], line: str) -> None:
    assert driver.stdin is not None
    driver.stdin.write(line + "\n")
    driver.stdin.flush()


def _answer(driver: subprocess.Popen[str]) -> dict[str, object]:
    assert driver.stdout is not None
    line = driver.stdout.readline()
    if not line:
        raise RuntimeError(f"the crowd driver exited with {driver.wait()}")
    answer: dict[str, object] = json.loads(line)

    return answer


def _stop_driver(driver: subprocess.Popen[str]) -> None:
    if driver.poll() is None:
        try:
            _command(driver, "close")
            driver.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            driver.kill()
            driver.wait()
