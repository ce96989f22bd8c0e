"""Proxmox guests as targets: listing, names, addresses, start-and-wait.

:class:`GuestInventory` is the Proxmox half of the inventory. It lists
the guests that carry the expose tag (or sit in a pool or carry an id
that policy names) from one ``/cluster/resources`` call, cached for a few
seconds; resolves ``name``, ``name.node`` or a vmid to one
:class:`Guest`; finds a guest's IPv4 address; and starts a stopped
guest, following its task until SSH answers. Every method is a
coroutine over :class:`~appliance.proxmox.ProxmoxClient`, whose calls
run in worker threads; from synchronous code use
:func:`appliance.proxmox.run_sync`.

Errors besides those of :mod:`appliance.proxmox`: ``AmbiguousName`` (an
``InputError``), ``NoIPv4Address`` and ``GuestNotReady`` (``Unavailable``),
``GuestAgentNotRunning``, ``StartFailed`` and ``StartStillRunning``
(``ProxmoxError``). They live in :mod:`appliance.errors` and are
importable from here too.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import ProxmoxSection
from .errors import AmbiguousName as AmbiguousName
from .errors import APIError, ConfigError, InputError, NodeOffline, NotFound
from .errors import GuestAgentNotRunning as GuestAgentNotRunning
from .errors import GuestNotReady as GuestNotReady
from .errors import NoIPv4Address as NoIPv4Address
from .errors import StartFailed as StartFailed
from .errors import StartStillRunning as StartStillRunning
from .proxmox import ProxmoxClient

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_TAG_SEPARATORS = re.compile(r"[;, ]+")
_IP_OPTION = re.compile(r"(?:^|,)ip=([^,/]+)")
_IPCONFIG_KEY = re.compile(r"^(?:ipconfig|net)(\d+)$")


class StartStage(enum.StrEnum):
    """What a start-and-wait is doing, in the words the web UI shows."""

    STARTING = "starting"
    WAITING_FOR_NETWORK = "waiting for network"
    READY = "ready"


#: Called with each stage and a detail: the UPID, or ``address:port``.
ProgressCallback = Callable[[StartStage, str], None]


@dataclass(frozen=True)
class Guest:
    """A QEMU VM or LXC container that is a target.

    ``available`` is false when its node is offline (then ``status`` is
    ``unknown`` and ``name`` is the last one seen, or empty).
    """

    vmid: int
    name: str
    node: str
    kind: str
    status: str
    tags: tuple[str, ...] = ()
    pool: str = ""
    available: bool = True

    @property
    def qualified_name(self) -> str:
        """``name.node``, the name that stays unique when names collide."""
        return f"{self.name}.{self.node}"

    def __str__(self) -> str:
        return f"{self.name or 'guest'} ({self.vmid})"


def parse_tags(text: str) -> tuple[str, ...]:
    """Split PVE's tag list (``;`` separated; ``,`` and spaces also occur)."""
    return tuple(tag for tag in _TAG_SEPARATORS.split(text) if tag)


class GuestInventory:
    """The guests people may reach, their addresses, and starting them.

    Guests count when they carry ``expose_tag``, sit in one of ``pools``
    or have one of ``vmids``; templates never do. ``addresses`` maps a
    vmid, name or ``name.node`` to an address that wins over every
    lookup. Addresses inside ``target_networks`` are preferred, and only
    through them may a loopback or link-local address be chosen.
    """

    def __init__(
        self,
        client: ProxmoxClient,
        *,
        expose_tag: str = "jit",
        pools: Iterable[str] = (),
        vmids: Iterable[int] = (),
        addresses: Mapping[int | str, str] | None = None,
        target_networks: Iterable[str] = (),
        cache_seconds: float = 5.0,
        start_timeout: float = 120.0,
        poll_interval: float = 0.5,
    ) -> None:
        self.client = client
        self.expose_tag = expose_tag
        self.pools = frozenset(pools)
        self.vmids = frozenset(vmids)
        self.addresses = dict(addresses or {})
        self.networks = _read_networks(target_networks)
        self.cache_seconds = cache_seconds
        self.start_timeout = start_timeout
        self.poll_interval = poll_interval
        self._cache: tuple[float, list[Guest]] | None = None
        self._names: dict[int, str] = {}

    @classmethod
    def from_config(
        cls,
        client: ProxmoxClient,
        section: ProxmoxSection,
        *,
        pools: Iterable[str] = (),
        vmids: Iterable[int] = (),
        addresses: Mapping[int | str, str] | None = None,
    ) -> GuestInventory:
        """Build the inventory from ``[proxmox]`` plus what policy names."""
        return cls(
            client,
            expose_tag=section.expose_tag,
            pools=pools,
            vmids=vmids,
            addresses=addresses,
            target_networks=section.target_networks,
            cache_seconds=section.cache_seconds,
            start_timeout=section.start_timeout,
        )

    def invalidate(self) -> None:
        """Forget the cached guest list; the next call asks the cluster."""
        self._cache = None

    async def guests(self, *, refresh: bool = False) -> list[Guest]:
        """Return the exposed guests, by vmid, from a cache of ``cache_seconds``."""
        now = time.monotonic()
        if not refresh and self._cache and now - self._cache[0] < self.cache_seconds:
            return list(self._cache[1])
        nodes, resources = await asyncio.gather(
            self.client.nodes(), self.client.cluster_guests()
        )
        online = {n.get("node") for n in nodes if n.get("status") == "online"}
        listed = [
            self._guest(entry, online) for entry in resources if self._exposed(entry)
        ]
        listed.sort(key=lambda guest: guest.vmid)
        self._cache = (now, listed)
        logger.debug("Listed %d exposed guests of %d", len(listed), len(resources))

        return list(listed)

    async def resolve(self, name: str) -> Guest:
        """Find a guest by vmid, name or ``name.node``; say so when ambiguous."""
        if not name:
            raise InputError("name a guest: its name, name.node or vmid")
        guests = await self.guests()
        if name.isdigit():
            found = [g for g in guests if g.vmid == int(name)]
        else:
            found = [g for g in guests if g.name == name]
            if not found:
                found = [g for g in guests if g.qualified_name == name]
        if len(found) > 1:
            choices = ", ".join(f"{g.qualified_name} ({g.vmid})" for g in found)
            raise AmbiguousName(
                f"{name!r} is ambiguous, it names {len(found)} guests: "
                f"{choices}; use name.node or the id"
            )
        if not found:
            raise NotFound(f"no Proxmox guest {name!r} is a target")

        return found[0]

    async def address(self, guest: Guest) -> str:
        """Return the guest's IPv4 address: explicit, agent, interfaces, ipconfig."""
        explicit = self.explicit_address(guest)
        if explicit:
            return explicit
        if guest.kind == "qemu":
            return await self._vm_address(guest)

        return await self._container_address(guest)

    async def start_and_wait(
        self,
        guest: Guest,
        *,
        timeout: float | None = None,
        port: int = 22,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Start ``guest`` unless it runs; return its address once ``port`` answers.

        The whole wait is bounded by ``timeout`` (default ``start_timeout``).
        A start task still running then raises :class:`StartStillRunning`
        with its UPID; a failed one raises :class:`StartFailed`.
        """
        deadline = time.monotonic() + (timeout or self.start_timeout)
        report = progress or _no_progress
        if not guest.available:
            raise NodeOffline(
                f"node offline: {guest.node!r} does not answer, so {guest} "
                "cannot be started",
                guest.node,
            )
        current = await self.client.guest_status(guest.node, guest.kind, guest.vmid)
        if current.get("status") != "running":
            upid = await self.client.start_guest(guest.node, guest.kind, guest.vmid)
            logger.info("Starting %s on %s: task %s", guest, guest.node, upid)
            report(StartStage.STARTING, upid)
            await self._follow_start(guest, upid, deadline)
            self.invalidate()
        report(StartStage.WAITING_FOR_NETWORK, "")
        address = await self._wait_for_port(guest, port, deadline)
        report(StartStage.READY, f"{address}:{port}")

        return address

    # --- listing ---------------------------------------------------------

    def _exposed(self, entry: Mapping[str, Any]) -> bool:
        """Whether a /cluster/resources entry is a target (never a template)."""
        if entry.get("type") not in ("qemu", "lxc") or entry.get("template"):
            return False
        tags = parse_tags(str(entry.get("tags", "")))

        return (
            (bool(self.expose_tag) and self.expose_tag in tags)
            or entry.get("pool") in self.pools
            or entry.get("vmid") in self.vmids
        )

    def _guest(self, entry: Mapping[str, Any], online: set[Any]) -> Guest:
        """Make a Guest of an entry; missing fields are not an error."""
        vmid = int(entry["vmid"])
        if entry.get("name"):
            self._names[vmid] = str(entry["name"])
        status = str(entry.get("status") or "unknown")
        node = str(entry.get("node", ""))

        return Guest(
            vmid=vmid,
            name=self._names.get(vmid, ""),
            node=node,
            kind=str(entry["type"]),
            status=status,
            tags=parse_tags(str(entry.get("tags", ""))),
            pool=str(entry.get("pool", "")),
            available=node in online and status != "unknown",
        )

    # --- addresses -------------------------------------------------------

    def explicit_address(self, guest: Guest) -> str | None:
        """Return the configured address for the guest, if any."""
        for key in (guest.vmid, guest.qualified_name, guest.name):
            if key and key in self.addresses:
                return self.addresses[key]

        return None

    async def _vm_address(self, guest: Guest) -> str:
        """Ask the QEMU guest agent; fall back to the cloud-init ipconfig."""
        try:
            interfaces = await self.client.agent_interfaces(guest.node, guest.vmid)
        except APIError as exc:
            if not _agent_unavailable(exc):
                raise
            return await self._fallback_address(guest, [], exc.reason)
        found = _interface_addresses(interfaces)

        return self._choose(found) or await self._fallback_address(guest, found)

    async def _container_address(self, guest: Guest) -> str:
        """Read an LXC container's interfaces; fall back to its netN ip=."""
        interfaces = await self.client.container_interfaces(guest.node, guest.vmid)
        found = _interface_addresses(interfaces or [])

        return self._choose(found) or await self._fallback_address(guest, found)

    async def _fallback_address(
        self, guest: Guest, found: list[IPAddress], problem: str = ""
    ) -> str:
        """Return the configured static address, or raise why there is none."""
        chosen = await self._configured_address(guest)
        if chosen is not None:
            return chosen
        if "agent" in problem:
            raise GuestAgentNotRunning(
                f"{guest}: {problem.rstrip('.')}, and no ipconfig names an "
                "address: install and start qemu-guest-agent in the VM"
            )
        if problem:
            raise GuestNotReady(f"{guest}: {problem.rstrip('.')}")

        raise _no_ipv4(guest, found)

    async def _configured_address(self, guest: Guest) -> str | None:
        """Return a static ``ip=`` from ipconfigN (VM) or netN (container)."""
        config = await self.client.guest_config(guest.node, guest.kind, guest.vmid)
        found = []
        for key in sorted(config, key=_config_order):
            match = _IPCONFIG_KEY.match(key)
            option = _IP_OPTION.search(str(config[key])) if match else None
            if option:
                found.append(_parse_ip(option[1]))

        return self._choose([ip for ip in found if ip is not None])

    def _choose(self, found: Iterable[IPAddress]) -> str | None:
        """Pick an IPv4 address: one in target_networks first, then any usable."""
        ipv4 = [ip for ip in found if ip.version == 4]
        for network in self.networks:
            for ip in ipv4:
                if ip in network:
                    return str(ip)
        for ip in ipv4:
            if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
                return str(ip)

        return None

    # --- starting --------------------------------------------------------

    async def _follow_start(self, guest: Guest, upid: str, deadline: float) -> None:
        """Poll the start task until it stops; raise unless it started the guest."""
        while True:
            task = await self.client.task_status(guest.node, upid)
            if task.get("status") == "stopped":
                break
            if time.monotonic() >= deadline:
                raise StartStillRunning(
                    f"starting {guest} is still running at the time limit; "
                    f"follow task {upid} on {guest.node}",
                    upid,
                )
            await asyncio.sleep(self._pause(deadline))
        exitstatus = str(task.get("exitstatus", ""))
        if not _started(exitstatus):
            raise StartFailed(
                f"starting {guest} failed: {exitstatus}", upid, exitstatus
            )
        logger.info("Started %s: %s", guest, exitstatus)

    async def _wait_for_port(self, guest: Guest, port: int, deadline: float) -> str:
        """Wait for an address and for ``port`` to accept a connection."""
        while True:
            try:
                address = await self.address(guest)
            except (GuestAgentNotRunning, NoIPv4Address, GuestNotReady) as exc:
                problem = str(exc)
            else:
                if await _port_answers(address, port, self._pause(deadline)):
                    return address
                problem = f"port {port} at {address} does not answer"
            if time.monotonic() >= deadline:
                raise GuestNotReady(f"{guest} is not ready in time: {problem}")
            await asyncio.sleep(self._pause(deadline))

    def _pause(self, deadline: float) -> float:
        """Return the next poll pause, never past the deadline (and never 0)."""
        return max(0.01, min(self.poll_interval, deadline - time.monotonic()))


def _read_networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse ``proxmox.target_networks``; a bad entry is a ConfigError."""
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(
                f"proxmox.target_networks: {text!r} is not a network (CIDR)"
            ) from None

    return tuple(networks)


def _interface_addresses(interfaces: Iterable[Mapping[str, Any]]) -> list[IPAddress]:
    """Collect the addresses of every interface but ``lo``."""
    found: list[IPAddress] = []
    for interface in interfaces:
        if interface.get("name") == "lo":
            continue
        texts = [a.get("ip-address", "") for a in interface.get("ip-addresses") or []]
        texts += [interface.get("inet", ""), interface.get("inet6", "")]
        for text in texts:
            ip = _parse_ip(str(text).partition("/")[0])
            if ip is not None and ip not in found:
                found.append(ip)

    return found


def _agent_unavailable(exc: APIError) -> bool:
    """Whether an error says the agent cannot answer (down, absent, VM off)."""
    return exc.status == 500 and ("agent" in exc.reason or "not running" in exc.reason)


def _parse_ip(text: str) -> IPAddress | None:
    """Parse an address; None for anything else (``dhcp``, ``manual``)."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _no_ipv4(guest: Guest, found: list[IPAddress]) -> NoIPv4Address:
    """The error for a guest without a usable IPv4 address."""
    seen = ", ".join(str(ip) for ip in found) or "none"

    return NoIPv4Address(
        f"{guest} has no IPv4 address the bastion can use (addresses seen: "
        f"{seen}); give it one, or an explicit address in the inventory"
    )


def _config_order(key: str) -> tuple[int, str]:
    """Sort ``ipconfig0``, ``ipconfig1``... by number."""
    match = _IPCONFIG_KEY.match(key)
    return (int(match[1]) if match else -1, key)


def _started(exitstatus: str) -> bool:
    """Whether a start task's exit status means the guest now runs."""
    return (
        exitstatus == "OK"
        or exitstatus.startswith("WARNINGS:")
        or exitstatus.endswith("already running")
    )


async def _port_answers(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()

    return True


def _no_progress(stage: StartStage, detail: str) -> None:
    """The progress callback used when the caller gives none."""
