"""``python -m tests.bench``: the bastion against an OpenSSH jump host.

Runs every section (or those named with ``--only``), prints one Markdown
table, and with ``--out`` writes it with the machine it ran on and the
command that made it. ``--smoke`` shrinks every size so the whole run
takes seconds; the test suite runs that. Needs root (namespaces, sshd).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .chain import ChainSettings, measure_verify
from .guestlist import GuestSettings, measure_guest_list
from .issuance import IssuanceSettings, measure_issuance
from .lab import Lab, add_candidate, build_lab
from .report import Row, render_table
from .tunnels import (
    TunnelSettings,
    measure_crowds,
    measure_setup,
    measure_throughput,
)

SECTIONS = ("throughput", "setup", "crowd", "issuance", "guests", "audit")
Runner = Callable[["Lab", "Settings", Path | None], list[Row]]
AES = "aes128-gcm@openssh.com"


@dataclass(frozen=True)
class Settings:
    """Sizes for every section."""

    tunnels: TunnelSettings
    issuance: IssuanceSettings
    guests: GuestSettings
    chain: ChainSettings
    ciphers: tuple[str | None, ...] = (AES, None)


FULL = Settings(TunnelSettings(), IssuanceSettings(), GuestSettings(), ChainSettings())
SMOKE = Settings(
    TunnelSettings(
        size=4_000_000,
        rounds=1,
        setup_runs=2,
        connections=2,
        tunnels=10,
        active=4,
        idle_seconds=0.5,
        active_seconds=0.5,
        settle_seconds=0.2,
    ),
    IssuanceSettings(in_process=3, sequential=1, parallel=1, verifies=1, workers=1),
    GuestSettings(guests=50, rounds=2),
    ChainSettings(events=3000),
)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run")
    parser.add_argument("--out", type=Path, help="write the results as Markdown")
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    parser.add_argument(
        "--candidate", type=Path, help="also measure the appliance of this checkout"
    )
    parser.add_argument(
        "--ciphers",
        default=f"{AES},default",
        help="throughput ciphers, comma-separated; default: the client's choice",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")

    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 when a section failed."""
    args = build_parser().parse_args(argv)
    # Paths are read relative to where the command was given, before the
    # work directory becomes the current one.
    for name in ("out", "json", "candidate"):
        if getattr(args, name):
            setattr(args, name, getattr(args, name).resolve())
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}: choose from {SECTIONS}")
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root: network namespaces and sshd")
    started = time.monotonic()
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="jit-bench-"))
    # The bastion must import from its own checkout (or --candidate's),
    # never from the current directory.
    os.chdir(workdir)
    try:
        ciphers = tuple(
            None if name == "default" else name for name in args.ciphers.split(",")
        )
        settings = SMOKE if args.smoke else FULL
        settings = dataclasses.replace(settings, ciphers=ciphers)
        rows, failed = run(workdir, settings, only, args.candidate)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    labels = _labels(rows)
    table = render_table(rows, labels)
    print(table)
    minutes = (time.monotonic() - started) / 60
    if args.out:
        text = describe_run(table, rows, load_before, minutes, argv)
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps([row.as_dict() for row in rows], indent=2))
    for name in failed:
        print(f"bench: section {name} failed (see above)", file=sys.stderr)

    return 1 if failed else 0


def run(
    workdir: Path, settings: Settings, only: list[str], candidate: Path | None
) -> tuple[list[Row], list[str]]:
    """Build the lab, run the chosen sections in order, tear it down."""
    rows: list[Row] = []
    failed: list[str] = []
    lab = build_lab(workdir / "lab")
    try:
        if candidate:
            add_candidate(lab, candidate)
        for name in SECTIONS:
            if name in only:
                runner = _SECTION_RUNNERS[name]
                _section(name, runner, lab, settings, rows, failed, candidate)
    finally:
        lab.close()

    return rows, failed


def _section(
    name: str,
    runner: Runner,
    lab: Lab,
    settings: Settings,
    rows: list[Row],
    failed: list[str],
    candidate: Path | None,
) -> None:
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        rows.extend(runner(lab, settings, candidate))
    except Exception:
        traceback.print_exc()
        failed.append(name)
    took = time.monotonic() - started
    print(f"bench: {name} took {took:.0f} s", file=sys.stderr, flush=True)


def _throughput(lab: Lab, settings: Settings, _: Path | None) -> list[Row]:
    rows = []
    for cipher in settings.ciphers:
        rows += measure_throughput(lab, settings.tunnels, cipher)

    # Throughput before CPU, upload before download, ciphers side by side.
    return sorted(rows, key=lambda row: (row.unit != "MB/s", "download" in row.name))


_SECTION_RUNNERS: dict[str, Runner] = {
    "throughput": _throughput,
    "setup": lambda lab, s, _: measure_setup(lab, s.tunnels, AES),
    "crowd": lambda lab, s, _: measure_crowds(lab, s.tunnels, AES),
    "issuance": lambda lab, s, c: measure_issuance(lab, s.issuance, c),
    "guests": lambda lab, s, c: measure_guest_list(lab.directory, s.guests, c),
    "audit": lambda lab, s, c: measure_verify(lab.directory, s.chain, c),
}


def _labels(rows: list[Row]) -> list[str]:
    labels = ["jit-bastion"]
    if any("candidate" in row.figures for row in rows):
        labels.append("candidate")

    return [*labels, "OpenSSH"]


def describe_machine() -> list[str]:
    """CPU, memory, kernel and the versions that matter, one per line."""
    cpu = _first_line("/proc/cpuinfo", "model name").split(":", 1)[-1].strip()
    memory = int(_first_line("/proc/meminfo", "MemTotal").split()[1]) // 1024
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr
    import asyncssh
    import cryptography

    return [
        f"CPU: {os.cpu_count()} x {cpu}; memory: {memory:,} MiB",
        f"Kernel: {platform.release()}; {_debian()}",
        f"Python {platform.python_version()}, asyncssh {asyncssh.__version__}, "
        f"cryptography {cryptography.__version__}; {ssh.strip()}",
    ]


def describe_run(
    table: str,
    rows: list[Row],
    load_before: tuple[float, float, float],
    minutes: float,
    argv: list[str] | None,
) -> str:
    """The Markdown results file: when, where, how, the table, the notes."""
    command = shlex.join(
        ["scripts/bench", *(argv if argv is not None else sys.argv[1:])]
    )
    notes = [f"- {row.name}: {row.note}" for row in rows if row.note and row.figures]
    load_after = os.getloadavg()
    lines = [
        "# Benchmark results",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}`, "
        f"{minutes:.1f} minutes.",
        "",
        *[f"- {line}" for line in describe_machine()],
        f"- Load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        "(other work on the machine shows up as noise)",
        "",
        table,
        "",
        *notes,
        "",
        *READING,
    ]

    return "\n".join(lines)


#: How to read the table, printed under it.
READING = [
    "How to read it:",
    "",
    "- Both hops run in one network namespace and take turns with the same",
    "  client, ssh_config and cipher; the target is a real sshd (setup) or a",
    "  TCP sink/source (everything else) in a namespace of its own. OpenSSH",
    "  is sshd with AllowTcpForwarding local, PermitOpen the target,",
    "  ForceCommand /bin/false and the same user CA.",
    "- Figures are medians with (min-max) over the rounds; a ratio is",
    "  jit-bastion over OpenSSH; relative goals are held to the ratio.",
    "- CPU is utime+stime from /proc of the hop's process tree: for sshd the",
    "  listener, its per-connection children and what they left in cutime.",
    "- Memory: RSS sums each process's resident pages (for sshd's hundreds of",
    "  processes that counts shared pages many times); PSS shares them out.",
    "- The cipher column is what ssh -v reported was negotiated. With no",
    "  Ciphers line OpenSSH's client picks chacha20-poly1305 whatever order",
    "  the server offers: the client's preference decides.",
    "- The machine is shared: other work shows up as spread between rounds",
    "  and as lower throughput for both hops alike.",
    "",
]


def _first_line(path: str, prefix: str) -> str:
    for line in Path(path).read_text().splitlines():
        if line.startswith(prefix):
            return line
    return ""


def _debian() -> str:
    try:
        return "Debian " + Path("/etc/debian_version").read_text().strip()
    except OSError:
        return platform.platform()


if __name__ == "__main__":
    sys.exit(main())
