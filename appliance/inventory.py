"""Targets: the hosts a grant may reach, looked up by name.

Two sources feed one list. Static targets are registered by an operator
with ``jit-bastion target add``; Proxmox guests come from the cluster
through :class:`~appliance.guests.GuestInventory` when ``[proxmox] url``
is set. :func:`gather_targets` lists both and :func:`find_target`
resolves a name, static targets first, then a guest's name,
``name.node`` or vmid; both have synchronous twins for the CLI and the
web UI (:func:`list_targets`, :func:`resolve_target`). A Proxmox outage
never hides static targets: the listing says guests are unavailable.

Whatever the source, the bastion connects only to the address that the
inventory gives for a granted target's name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .config import Config, parse_guest_addresses
from .errors import BastionError, ConfigError, InputError, NotFound
from .guests import Guest, GuestInventory
from .names import check_target_name
from .proxmox import ProxmoxClient, run_sync
from .store import targets

if TYPE_CHECKING:
    from .state import State

logger = logging.getLogger(__name__)

#: How many differently configured guest inventories one process keeps.
_KEPT_INVENTORIES = 4
_inventories: dict[tuple[Any, ...], GuestInventory] = {}
_inventories_lock = threading.Lock()


@dataclass(frozen=True)
class Target:
    """A host people may be granted: its name and where it listens.

    A Proxmox guest also carries its kind (``qemu``, ``lxc``), node,
    vmid, tags, pool and status, and the :class:`Guest` it was made
    from; its ``host`` is empty until an address is looked up, unless
    ``proxmox.addresses`` names one. ``available`` is false while the
    guest's node is offline.
    """

    name: str
    host: str
    port: int = 22
    kind: str = "static"
    node: str | None = None
    vmid: int | None = None
    tags: tuple[str, ...] = ()
    pool: str | None = None
    status: str = "running"
    available: bool = True
    guest: Guest | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Listing:
    """The targets found, by name, and why guests are missing if they are.

    Iterating a listing gives its targets.
    """

    targets: tuple[Target, ...]
    problem: str = ""

    def __iter__(self) -> Iterator[Target]:
        return iter(self.targets)

    def __len__(self) -> int:
        return len(self.targets)


def guest_inventory(config: Config) -> GuestInventory | None:
    """Return this process's inventory of Proxmox guests; None without Proxmox.

    One inventory, and so one API client and one cache, serves every
    caller with the same ``[proxmox]`` section and policy, so the
    bastion and a web worker ask the cluster once per ``cache_seconds``.
    """
    section = config.proxmox
    if not section.url:
        return None
    pools, vmids = _policy_selectors(config.policy)
    key = (section, pools, vmids)
    with _inventories_lock:
        found = _inventories.get(key)
        if found is None:
            found = _build_inventory(config, pools, vmids)
            _forget_oldest_inventories()
            _inventories[key] = found

    return found


def _build_inventory(
    config: Config, pools: frozenset[str], vmids: frozenset[int]
) -> GuestInventory:
    """Make a guest inventory and its API client from the config."""
    section = config.proxmox
    try:
        addresses = parse_guest_addresses(section.addresses)
    except ValueError as exc:
        raise ConfigError(f"proxmox.addresses: {exc}") from None
    client = ProxmoxClient.from_config(section)

    return GuestInventory.from_config(
        client, section, pools=pools, vmids=vmids, addresses=addresses
    )


def _forget_oldest_inventories() -> None:
    """Close the oldest inventories once more than a few are kept."""
    while len(_inventories) >= _KEPT_INVENTORIES:
        oldest = next(iter(_inventories))
        _inventories.pop(oldest).client.close()


def _policy_selectors(
    rules: Sequence[Mapping[str, Any]],
) -> tuple[frozenset[str], frozenset[int]]:
    """The pools and vmids that policy rules name: those guests are targets."""
    pools = {str(pool) for rule in rules for pool in rule.get("pools", ())}
    vmids = {
        vmid
        for rule in rules
        for vmid in rule.get("vmids", ())
        if isinstance(vmid, int) and not isinstance(vmid, bool)
    }

    return frozenset(pools), frozenset(vmids)


async def gather_targets(state: State, *, addresses: bool = False) -> Listing:
    """List static targets and Proxmox guests, by name.

    With ``addresses``, look up the address of each running guest (one
    API call each). When Proxmox fails, the static targets are still
    listed and ``problem`` says why the guests are not.
    """
    static = await asyncio.to_thread(list_static_targets, state.engine)
    try:
        inventory = guest_inventory(state.config)
        guests = await inventory.guests() if inventory else []
    except BastionError as exc:
        logger.warning("Proxmox guests are unavailable: %s", exc)
        return Listing(tuple(static), f"Proxmox guests are unavailable: {exc}")
    if inventory is None:
        return Listing(tuple(static))
    taken = {target.name for target in static}
    found = [guest_target(guest, guests, taken, inventory) for guest in guests]
    if addresses:
        found = list(await asyncio.gather(*(_addressed(inventory, t) for t in found)))

    return Listing(tuple(sorted(static + found, key=lambda target: target.name)))


def list_targets(state: State, *, addresses: bool = False) -> Listing:
    """:func:`gather_targets` for synchronous callers (CLI, web UI)."""
    return run_sync(gather_targets(state, addresses=addresses))


async def find_target(state: State, name: str) -> Target:
    """Resolve ``name``: a static target first, then a Proxmox guest.

    A guest is found by its name, ``name.node`` or vmid; the target
    returned carries its canonical name (see :func:`guest_target`), the
    one a grant stores. A bare name two guests share is ambiguous.
    """
    try:
        return await asyncio.to_thread(find_static_target, state.engine, name)
    except NotFound:
        inventory = guest_inventory(state.config)
        if inventory is None:
            raise
    try:
        guest = await inventory.resolve(name)
    except NotFound:
        raise NotFound(
            f"unknown target {name!r}: no static target or Proxmox guest has that name"
        ) from None
    guests = await inventory.guests()
    static = await asyncio.to_thread(list_static_targets, state.engine)

    return guest_target(guest, guests, {t.name for t in static}, inventory)


def resolve_target(state: State, name: str) -> Target:
    """:func:`find_target` for synchronous callers (CLI, web UI)."""
    return run_sync(find_target(state, name))


def guest_target(
    guest: Guest,
    guests: Sequence[Guest],
    taken: set[str],
    inventory: GuestInventory,
) -> Target:
    """Make the target for ``guest`` under its canonical name.

    The canonical name is the guest's own name when no other guest and
    no static target (``taken``) has it, else ``name.node``; a guest
    whose name is unknown (its node was never seen online) is its vmid.
    """
    same = [g for g in guests if g.name == guest.name]
    if not guest.name:
        name = str(guest.vmid)
    elif len(same) == 1 and guest.name not in taken:
        name = guest.name
    else:
        name = guest.qualified_name

    return Target(
        name=name,
        host=inventory.explicit_address(guest) or "",
        kind=guest.kind,
        node=guest.node or None,
        vmid=guest.vmid,
        tags=guest.tags,
        pool=guest.pool or None,
        status=guest.status,
        available=guest.available,
        guest=guest,
    )


async def _addressed(inventory: GuestInventory, target: Target) -> Target:
    """Fill in a running guest's address; leave it empty when none is found."""
    if target.host or target.guest is None or target.status != "running":
        return target
    try:
        host = await inventory.address(target.guest)
    except BastionError as exc:
        logger.info("No address for %s: %s", target.name, exc)
        return target

    return dataclasses.replace(target, host=host)


def add_static_target(engine: Engine, name: str, host: str, port: int) -> Target:
    """Register a static target; its name must be new."""
    check_target_name(name)
    if not host or any(c.isspace() for c in host):
        raise InputError(f"{host!r} is not a host name or address")
    if not 0 < port < 65536:
        raise InputError(f"{port!r} is not a TCP port")
    with engine.begin() as connection:
        existing = connection.execute(
            sa.select(targets.c.name).where(targets.c.name == name)
        ).first()
        if existing:
            raise InputError(f"target {name!r} exists already")
        connection.execute(
            sa.insert(targets).values(
                name=name, host=host, port=port, created_at=datetime.now(UTC)
            )
        )

    return Target(name, host, port)


def list_static_targets(engine: Engine) -> list[Target]:
    """Return every static target, by name."""
    with engine.connect() as connection:
        rows = connection.execute(sa.select(targets).order_by(targets.c.name)).all()

    return [Target(row.name, row.host, row.port) for row in rows]


def find_static_target(engine: Engine, name: str) -> Target:
    """Return the static target called ``name``, or raise NotFound."""
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(targets).where(targets.c.name == name)
        ).first()
    if row is None:
        raise NotFound(f"unknown target {name!r}")

    return Target(row.name, row.host, row.port)
