"""The target list with thousands of Proxmox guests, from the test double.

A state directory of its own points ``[proxmox]`` at
:class:`tests.pvedouble.PVEDouble` holding the guests, all tagged for
the bastion, on two nodes. :func:`appliance.inventory.list_targets` is
what the CLI and the web UI call; it is timed once right after the
cached guest list was dropped (one ``/cluster/resources`` call and the
building of every target) and once more from the cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance import inventory
from appliance.state import CONFIG_NAME, State, initialize, set_config_value

from .lab import REPO
from .report import Figure, Row, at_most

TOKEN_ID = "bastion@pve!jit"


@dataclass(frozen=True)
class GuestSettings:
    """How many guests, and how many times to list them."""

    guests: int = 2000
    rounds: int = 10


def present() -> str:
    """Empty when the inventory and the double exist, else why not."""
    try:
        import tests.pvedouble  # noqa: F401
        from appliance.inventory import list_targets  # noqa: F401
    except ImportError as exc:
        return f"not measured: {exc.name} not present"

    return ""


def measure_guest_list(
    directory: Path, settings: GuestSettings, candidate: Path | None = None
) -> list[Row]:
    """Rows for listing the targets from cache and after a refresh.

    Each checkout (this one, and ``candidate`` if given) lists in a
    process of its own, against a double of its own with the same guests.
    """
    name = f"Target list, {settings.guests:,} guests"
    missing = present()
    if missing:
        return [
            Row(f"{name}, from cache", "ms", goal=at_most(100), note=missing),
            Row(f"{name}, after a refresh", "ms", note=missing),
        ]
    checkouts = {"jit-bastion": None, "candidate": candidate}
    times = {
        label: _time_in_process(directory / f"guests-{label}", settings, checkout)
        for label, checkout in checkouts.items()
        if label == "jit-bastion" or checkout
    }

    return [
        Row(
            f"{name}, from cache",
            "ms",
            "-",
            {k: Figure.of(v["cached"]) for k, v in times.items()},
            at_most(100),
        ),
        Row(
            f"{name}, after a refresh",
            "ms",
            "-",
            {k: Figure.of(v["fresh"]) for k, v in times.items()},
        ),
    ]


def _time_in_process(
    directory: Path, settings: GuestSettings, checkout: Path | None
) -> dict[str, list[float]]:
    """Run :func:`time_listing` in a process that imports ``checkout``."""
    directory.mkdir(parents=True)
    paths = [str(checkout)] if checkout else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(REPO)])}
    argv = [sys.executable, "-m", "tests.bench.guestlist", str(directory)]
    argv += [str(settings.guests), str(settings.rounds)]
    result = subprocess.run(
        argv, cwd=directory, env=env, capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        raise RuntimeError(f"listing the guests failed:\n{result.stderr[-2000:]}")
    times: dict[str, list[float]] = json.loads(result.stdout)

    return times


def time_listing(directory: Path, guests: int, rounds: int) -> dict[str, list[float]]:
    """Milliseconds of each listing: after dropping the cache, then from it."""
    from tests.pvedouble import PVEDouble, write_tls_files

    secret = str(uuid.uuid4())
    (directory / "pve-tls").mkdir()
    double = PVEDouble(write_tls_files(directory / "pve-tls"))
    _populate(double, guests, secret)
    with double:
        state = _state(directory / "guests-state", double.url, secret, double.tls.ca)
        source = inventory.guest_inventory(state.config)
        assert source is not None
        cached, fresh = [], []
        for _ in range(rounds):
            source.invalidate()
            fresh.append(_listing_ms(state, guests))
            cached.append(_listing_ms(state, guests))
        source.client.close()

    return {"cached": cached, "fresh": fresh}


def _listing_ms(state: State, expected: int) -> float:
    started = time.monotonic()
    listing = inventory.list_targets(state)
    elapsed = (time.monotonic() - started) * 1000
    if len(listing) < expected or listing.problem:
        raise RuntimeError(f"listed {len(listing)} targets: {listing.problem}")

    return elapsed


def _populate(double: object, count: int, secret: str) -> None:
    cluster = double.cluster  # type: ignore[attr-defined]
    for node in ("pve1", "pve2"):
        cluster.add_node(node)
    cluster.add_token(TOKEN_ID, secret)
    for number in range(count):
        kind = "lxc" if number % 3 == 0 else "qemu"
        status = "running" if number % 2 == 0 else "stopped"
        cluster.add_guest(
            1000 + number,
            f"guest{number:04d}",
            f"pve{number % 2 + 1}",
            kind=kind,
            status=status,
        )


def _state(path: Path, url: str, secret: str, ca: Path) -> State:
    """A state directory whose [proxmox] section names the double."""
    initialize(path, name="bastion.test")
    config = path / CONFIG_NAME
    text = config.read_text()
    for key, value in (
        ("url", url),
        ("token_id", TOKEN_ID),
        ("token_secret", secret),
        ("verify_tls", str(ca)),
    ):
        text = set_config_value(text, "proxmox", key, value)
    config.write_text(text)

    return State.open(path)


def main(argv: list[str]) -> int:
    """``DIRECTORY GUESTS ROUNDS``: print the listing times as JSON."""
    times = time_listing(Path(argv[0]), int(argv[1]), int(argv[2]))
    print(json.dumps(times))

    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
