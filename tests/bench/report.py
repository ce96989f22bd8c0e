"""Rows of figures, the goals they are held to, and the printed table.

A :class:`Row` holds one measurement for each hop that was measured
(keyed by the hop's label), the cipher it ran with, and the goal it is
held to. A goal is either relative (the bastion's figure over OpenSSH's)
or absolute (the bastion's figure alone). A row that could not be
measured says why in ``note`` and is never left out.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

BASTION = "jit-bastion"
OPENSSH = "OpenSSH"


@dataclass(frozen=True)
class Figure:
    """A median with the smallest and largest sample, or one value."""

    value: float
    low: float | None = None
    high: float | None = None
    count: int = 1

    @classmethod
    def of(cls, samples: Sequence[float]) -> Figure:
        """The median of ``samples``, with their range."""
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))

    def render(self, digits: int) -> str:
        """``12.3 (11.0-14.1)``, or the value alone."""
        text = f"{self.value:,.{digits}f}"
        if self.low is not None and self.high is not None and self.count > 1:
            text += f" ({self.low:,.{digits}f}-{self.high:,.{digits}f})"
        return text


@dataclass(frozen=True)
class Goal:
    """A limit on the bastion's figure, or on its ratio to OpenSSH's."""

    limit: float
    at_most: bool
    relative: bool

    def describe(self, unit: str) -> str:
        """The goal in words, as printed beside the figure."""
        sign = "<=" if self.at_most else ">="
        if self.relative:
            return f"{sign} {self.limit:g}x OpenSSH"
        return f"{sign} {self.limit:g} {unit}"

    def met(self, value: float) -> bool:
        """Whether ``value`` (a figure or a ratio) meets the goal."""
        return value <= self.limit if self.at_most else value >= self.limit


def at_least_ratio(limit: float) -> Goal:
    return Goal(limit, at_most=False, relative=True)


def at_most_ratio(limit: float) -> Goal:
    return Goal(limit, at_most=True, relative=True)


def at_most(limit: float) -> Goal:
    return Goal(limit, at_most=True, relative=False)


@dataclass
class Row:
    """One measurement of every hop, with its unit, cipher and goal."""

    name: str
    unit: str
    cipher: str = "-"
    figures: dict[str, Figure] = field(default_factory=dict)
    goal: Goal | None = None
    note: str = ""
    digits: int = 1

    def ratio(self, label: str = BASTION) -> float | None:
        """The hop's figure over OpenSSH's, when both were measured."""
        mine, theirs = self.figures.get(label), self.figures.get(OPENSSH)
        if mine is None or theirs is None or theirs.value == 0:
            return None
        return mine.value / theirs.value

    def verdict(self, label: str = BASTION) -> str:
        """``met``, ``NOT MET``, or ``-`` without a goal or a figure."""
        if self.goal is None or label not in self.figures:
            return "-"
        value = self.ratio(label) if self.goal.relative else self.figures[label].value
        if value is None:
            return "-"
        return "met" if self.goal.met(value) else "NOT MET"

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data, for the smoke test and comparisons."""
        return {
            "name": self.name,
            "unit": self.unit,
            "cipher": self.cipher,
            "figures": {k: vars(v) for k, v in self.figures.items()},
            "ratio": self.ratio(),
            "goal": self.goal.describe(self.unit) if self.goal else None,
            "verdict": self.verdict(),
            "note": self.note,
        }


def render_table(rows: Iterable[Row], labels: Sequence[str]) -> str:
    """A Markdown table: one column per hop, then ratio, goal and verdict."""
    candidates = [label for label in labels if label not in (BASTION, OPENSSH)]
    head = ["Measurement", "Cipher", *labels, "Ratio", "Goal", "Met"]
    head += [f"{c} ratio" for c in candidates] + [f"{c} met" for c in candidates]
    lines = [_line(head), _line(["---"] * len(head))]
    for row in rows:
        cells = [f"{row.name} ({row.unit})", row.cipher]
        cells += [_cell(row, label) for label in labels]
        cells += [_ratio(row, BASTION), _goal(row), row.verdict()]
        cells += [_ratio(row, c) for c in candidates]
        cells += [row.verdict(c) for c in candidates]
        lines.append(_line(cells))

    return "\n".join(lines)


def _cell(row: Row, label: str) -> str:
    if label in row.figures:
        return row.figures[label].render(row.digits)
    if row.note and label == BASTION:
        return row.note
    return "n/a"


def _ratio(row: Row, label: str) -> str:
    ratio = row.ratio(label)
    return "-" if ratio is None else f"{ratio:.2f}x"


def _goal(row: Row) -> str:
    return row.goal.describe(row.unit) if row.goal else "-"


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
