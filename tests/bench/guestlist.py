"""The target list with thousands of Proxmox guests, from the test double.

A state directory of its own points ``[proxmox]`` at
:class:`tests.pvedouble.PVEDouble` holding the guests, all tagged for
the bastion, on two nodes. :func:`appliance.inventory.list_targets` is
what the CLI and the web UI call; it is timed once right after the
cached guest list was dropped (one ``/cluster/resources`` call and the
building of every target) and once more from the cache.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance import inventory
from appliance.state import CONFIG_NAME, State, initialize, set_config_value

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


def measure_guest_list(directory: Path, settings: GuestSettings) -> list[Row]:
    """Rows for listing the targets from cache and after a refresh."""
    name = f"Target list, {settings.guests:,} guests"
    missing = present()
    if missing:
        return [
            Row(f"{name}, from cache", "ms", goal=at_most(100), note=missing),
            Row(f"{name}, after a refresh", "ms", note=missing),
        ]
    cached, fresh = _time_listing(directory, settings)
    label = "-"

    return [
        Row(
            f"{name}, from cache",
            "ms",
            label,
            {"jit-bastion": Figure.of(cached)},
            at_most(100),
        ),
        Row(f"{name}, after a refresh", "ms", label, {"jit-bastion": Figure.of(fresh)}),
    ]


def _time_listing(
    directory: Path, settings: GuestSettings
) -> tuple[list[float], list[float]]:
    from tests.pvedouble import PVEDouble, write_tls_files

    secret = str(uuid.uuid4())
    (directory / "pve-tls").mkdir()
    double = PVEDouble(write_tls_files(directory / "pve-tls"))
    _populate(double, settings.guests, secret)
    with double:
        state = _state(directory / "guests-state", double.url, secret, double.tls.ca)
        guests = inventory.guest_inventory(state.config)
        assert guests is not None
        cached, fresh = [], []
        for _ in range(settings.rounds):
            guests.invalidate()
            fresh.append(_listing_ms(state, settings.guests))
            cached.append(_listing_ms(state, settings.guests))
        guests.client.close()

    return cached, fresh


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
