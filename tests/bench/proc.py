"""What a server process tree costs, read from ``/proc``.

sshd forks a monitor per connection and the monitor forks the
unprivileged child that moves the bytes, so sshd's cost is its whole
tree: the live processes plus what finished children left in their
parent's ``cutime``/``cstime``. The bastion is one process with threads,
and the same functions read it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Usage:
    """CPU seconds and memory of a process tree at one moment."""

    cpu: float
    rss: int
    pss: int
    processes: int


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _cpu(fields: list[str]) -> float:
    """utime + stime + cutime + cstime, in seconds."""
    return sum(int(value) for value in fields[11:15]) / TICKS


def _memory(pid: int) -> tuple[int, int]:
    """Resident and proportional set size of one process, in bytes."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("Pss:"):
            pss = int(line.split()[1]) * 1024

    return rss, pss


def descendants(root: int) -> list[int]:
    """The live processes below ``root``, found by their parent ids."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        children = parents.get(queue.pop(), [])
        found.extend(children)
        queue.extend(children)

    return found


def read_usage(root: int, memory: bool = False) -> Usage:
    """CPU (and, when asked, memory) of ``root`` and everything below it."""
    cpu = 0.0
    rss = pss = count = 0
    for pid in [*descendants(root), root]:
        try:
            cpu += _cpu(_stat_fields(pid))
            if memory:
                one_rss, one_pss = _memory(pid)
                rss, pss = rss + one_rss, pss + one_pss
        except (OSError, ValueError):
            continue  # it ended between the listing and the read
        count += 1

    return Usage(cpu, rss, pss, count)


def wait_for_no_children(root: int, timeout: float = 10) -> None:
    """Wait until every per-connection child of ``root`` has been reaped."""
    deadline = time.monotonic() + timeout
    while descendants(root) and time.monotonic() < deadline:
        time.sleep(0.02)
