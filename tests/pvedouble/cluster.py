"""The state of a pretend Proxmox VE cluster and the answers it gives.

Nodes, QEMU and LXC guests, API tokens with ACLs, and start tasks that
take time. Time is read from a clock on every call, so a start task runs
for ``start_seconds`` and the guest agent comes up ``agent_delay`` later
without any thread of its own. What a call needs (parameters, privileges)
is read from the official schema, so the double is as strict as PVE.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .schema import method_info

VERSION = "9.1.3"
#: What a token may do unless a test says otherwise.
DEFAULT_PRIVILEGES = frozenset({"VM.Audit", "VM.PowerMgmt", "VM.GuestAgent.Audit"})
AUTO = "auto"
GIB = 1024**3

Args = dict[str, str]


class Failure(Exception):
    """An HTTP error; PVE puts its message in the reason phrase."""

    def __init__(
        self, status: int, reason: str, errors: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.errors = errors


@dataclass
class Node:
    """A cluster node; an offline one answers 595 for its own endpoints."""

    name: str
    online: bool = True


@dataclass
class Guest:
    """A QEMU VM or LXC container and how it behaves when started.

    ``backing`` is the ``host:port`` of a real sshd standing in for the
    guest; its host is the IPv4 address the guest reports unless ``ipv4``
    says otherwise (None: no IPv4 at all). Without either the guest
    reports a TEST-NET-1 address (192.0.2.x), which leads nowhere: only
    start a guest that has a backing. ``extra_ipv4`` adds eth1, eth2...
    ``ipconfig`` is the cloud-init ``ipconfig0`` of a VM or the ``ip=``
    part of a container's ``net0``.
    ``start_result`` is the start task's exit status.
    """

    vmid: int
    name: str
    node: str
    kind: str = "qemu"
    status: str = "stopped"
    tags: tuple[str, ...] = ("jit",)
    pool: str = ""
    backing: str = ""
    ipv4: str | None = AUTO
    ipv6: str | None = None
    extra_ipv4: tuple[str, ...] = ()
    ipconfig: str | None = None
    agent: bool = True
    start_seconds: float = 0.2
    agent_delay: float = 0.2
    start_result: str = "OK"
    template: bool = False
    running_since: float = field(default=0.0, repr=False)

    @property
    def address(self) -> str | None:
        """The IPv4 address the guest reports once its network is up."""
        if self.ipv4 != AUTO:
            return self.ipv4
        if self.backing:
            return self.backing.rpartition(":")[0]

        return f"192.0.2.{self.vmid % 256}"

    @property
    def backing_port(self) -> int:
        """The port of the sshd behind the guest (22 without one)."""
        return int(self.backing.rpartition(":")[2]) if self.backing else 22

    @property
    def mac(self) -> str:
        """A stable MAC address in Proxmox's BC:24:11 range."""
        high, low = divmod(self.vmid % 65536, 256)
        return f"BC:24:11:00:{high:02X}:{low:02X}"


@dataclass
class Token:
    """An API token: ``user@realm!name``, its secret and its ACL."""

    tokenid: str
    secret: str
    acl: dict[str, frozenset[str]]


@dataclass
class Task:
    """A start task; it stops at ``ends_at`` with ``result`` as exit status."""

    upid: str
    node: str
    vmid: int
    kind: str
    user: str
    pid: int
    pstart: int
    starttime: int
    ends_at: float
    result: str
    status: str = "running"


#: The endpoints the double serves, as (method, schema path, handler).
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/version", "version"),
    ("GET", "/nodes", "list_nodes"),
    ("GET", "/cluster/resources", "resources"),
    ("GET", "/access/permissions", "permissions"),
    ("GET", "/nodes/{node}/qemu/{vmid}/status/current", "status_current"),
    ("GET", "/nodes/{node}/lxc/{vmid}/status/current", "status_current"),
    ("POST", "/nodes/{node}/qemu/{vmid}/status/start", "start"),
    ("POST", "/nodes/{node}/lxc/{vmid}/status/start", "start"),
    ("GET", "/nodes/{node}/tasks/{upid}/status", "task_status"),
    ("GET", "/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces", "agent"),
    ("GET", "/nodes/{node}/lxc/{vmid}/interfaces", "lxc_interfaces"),
    ("GET", "/nodes/{node}/qemu/{vmid}/config", "config"),
    ("GET", "/nodes/{node}/lxc/{vmid}/config", "config"),
)


class Cluster:
    """Nodes, guests, tokens and tasks, safe to use from server threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.version = VERSION
        self.nodes: dict[str, Node] = {}
        self.guests: dict[int, Guest] = {}
        self.tokens: dict[str, Token] = {}
        self.tasks: dict[str, Task] = {}
        self.lock = threading.RLock()
        self._clock = clock
        self._pids = itertools.count(4000)

    def add_node(self, name: str, *, online: bool = True) -> Node:
        """Add a node."""
        with self.lock:
            node = self.nodes[name] = Node(name, online)
        return node

    def add_guest(self, vmid: int, name: str, node: str, **details: Any) -> Guest:
        """Add a guest; ``details`` are :class:`Guest` fields."""
        guest = Guest(vmid, name, node, **details)
        if guest.status == "running":
            guest.running_since = self._clock() - 3600
        with self.lock:
            if guest.node not in self.nodes:
                raise ValueError(f"no node {guest.node!r}: add it first")
            self.guests[vmid] = guest
        return guest

    def add_token(
        self,
        tokenid: str,
        secret: str,
        acl: dict[str, Iterable[str]] | None = None,
    ) -> Token:
        """Add a token; its ACL maps paths to privileges (propagated)."""
        paths = {"/": DEFAULT_PRIVILEGES} if acl is None else acl
        token = Token(tokenid, secret, {p: frozenset(v) for p, v in paths.items()})
        with self.lock:
            self.tokens[tokenid] = token
        return token

    def set_online(self, node: str, online: bool) -> None:
        """Take a node off the network or bring it back."""
        with self.lock:
            self.nodes[node].online = online

    def serve(
        self,
        method: str,
        template: str,
        args: Args,
        params: Args,
        authorization: str,
    ) -> Any:
        """Answer one call as PVE does: auth, node, parameters, privileges."""
        with self.lock:
            self._advance()
            token = self._authenticate(authorization)
            if "node" in args:
                self._reach(args["node"])
            info = method_info(method, template)
            args = {**args, "_kind": "lxc" if "/lxc/" in template else "qemu"}
            _verify_parameters(info["parameters"], {**params, **args})
            self._check_permission(token, info["permissions"], args)
            handler = dict((t, h) for m, t, h in ROUTES if m == method)[template]

            return getattr(self, "_" + handler)(token, args, params)

    # --- access control --------------------------------------------------

    def _authenticate(self, authorization: str) -> Token:
        """Return the token the header names; 401 for anything else."""
        scheme, _, credentials = authorization.partition("=")
        if scheme != "PVEAPIToken" or not credentials:
            raise Failure(401, "No ticket")
        tokenid, _, secret = credentials.partition("=")
        token = self.tokens.get(tokenid)
        if token is None:
            raise Failure(401, f"no such token '{tokenid}'")
        if secret != token.secret:
            raise Failure(401, "invalid token value!")

        return token

    def _reach(self, name: str) -> None:
        """Fail as PVE's proxy does for an unknown or offline node."""
        node = self.nodes.get(name)
        if node is None:
            raise Failure(
                500,
                f"hostname lookup '{name}' failed - failed to get address info "
                f"for: {name}: Name or service not known",
            )
        if not node.online:
            raise Failure(595, "No route to host")

    def _check_permission(
        self, token: Token, permissions: dict[str, Any], args: Args
    ) -> None:
        """Apply the schema's ``["perm", path, [privs], "any", 1]`` check."""
        check = permissions.get("check")
        if not check:
            return
        if check[0] != "perm":
            raise NotImplementedError(f"permission check {check!r}")
        path = check[1].format(**args)
        wanted = check[2]
        held = self.privileges(token, path)
        if "any" in check[3:]:
            if not held.intersection(wanted):
                raise _denied(path, "|".join(wanted))
            return
        for privilege in wanted:
            if privilege not in held:
                raise _denied(path, privilege)

    def privileges(self, token: Token, path: str) -> set[str]:
        """Return the token's privileges on ``path``, pools included."""
        held: set[str] = set()
        for acl_path, privileges in token.acl.items():
            prefix = acl_path.rstrip("/") + "/"
            if path == acl_path or path.startswith(prefix):
                held |= privileges
        match = re.fullmatch(r"/vms/(\d+)", path)
        guest = self.guests.get(int(match[1])) if match else None
        if guest is not None and guest.pool:
            held |= token.acl.get(f"/pool/{guest.pool}", frozenset())

        return held

    # --- time ------------------------------------------------------------

    def _advance(self) -> None:
        """Finish the tasks whose time is up; started guests run from then."""
        now = self._clock()
        for task in self.tasks.values():
            if task.status == "running" and now >= task.ends_at:
                task.status = "stopped"
                if _started(task.result):
                    guest = self.guests[task.vmid]
                    guest.status = "running"
                    guest.running_since = task.ends_at

    # --- handlers --------------------------------------------------------

    def _version(self, token: Token, args: Args, params: Args) -> Any:
        release = ".".join(self.version.split(".")[:2])
        return {"version": self.version, "release": release, "repoid": "5d0ed8a4"}

    def _list_nodes(self, token: Token, args: Args, params: Args) -> Any:
        return [_node_entry(node) for node in self.nodes.values()]

    def _resources(self, token: Token, args: Args, params: Args) -> Any:
        wanted = params.get("type")
        entries: list[dict[str, Any]] = []
        if wanted in (None, "node"):
            entries += [_node_entry(node) for node in self.nodes.values()]
        if wanted in (None, "vm"):
            entries += [
                self._guest_entry(guest)
                for guest in self.guests.values()
                if "VM.Audit" in self.privileges(token, f"/vms/{guest.vmid}")
            ]

        return entries

    def _permissions(self, token: Token, args: Args, params: Args) -> Any:
        if "path" in params:
            paths = [params["path"]]
        else:
            pooled = [f"/vms/{g.vmid}" for g in self.guests.values() if g.pool]
            paths = [*token.acl, *pooled]

        return {
            path: {privilege: 1 for privilege in sorted(held)}
            for path in paths
            if (held := self.privileges(token, path)) or "path" in params
        }

    def _status_current(self, token: Token, args: Args, params: Args) -> Any:
        guest = self._guest(args)
        running = guest.status == "running"
        status: dict[str, Any] = {
            "vmid": guest.vmid,
            "name": guest.name,
            "status": guest.status,
            "ha": {"managed": 0},
            "cpus": 2,
            "maxmem": 2 * GIB,
            "maxdisk": 8 * GIB,
            "uptime": self._uptime(guest),
        }
        if guest.tags:
            status["tags"] = ";".join(guest.tags)
        if guest.kind == "qemu":
            status.update(qmpstatus=guest.status, agent=int(guest.agent))
            if running:
                status["pid"] = 1000 + guest.vmid

        return status

    def _start(self, token: Token, args: Args, params: Args) -> Any:
        guest = self._guest(args)
        label = "VM" if guest.kind == "qemu" else "CT"
        result = guest.start_result
        if guest.status == "running":
            result = f"{label} {guest.vmid} already running"
        task = self._new_task(guest, token, result)
        self.tasks[task.upid] = task

        return task.upid

    def _task_status(self, token: Token, args: Args, params: Args) -> Any:
        task = self.tasks.get(args["upid"])
        if task is None or task.node != args["node"]:
            raise Failure(500, "unable to parse worker upid or no such task")
        if task.user != token.tokenid:
            node_path = f"/nodes/{task.node}"
            if "Sys.Audit" not in self.privileges(token, node_path):
                raise _denied(node_path, "Sys.Audit")
        status: dict[str, Any] = {
            "upid": task.upid,
            "node": task.node,
            "pid": task.pid,
            "pstart": task.pstart,
            "starttime": task.starttime,
            "type": "qmstart" if task.kind == "qemu" else "vzstart",
            "id": str(task.vmid),
            "user": task.user,
            "status": task.status,
        }
        if task.status == "stopped":
            status["exitstatus"] = task.result

        return status

    def _agent(self, token: Token, args: Args, params: Args) -> Any:
        guest = self._guest(args)
        if guest.status != "running":
            raise Failure(500, f"VM {guest.vmid} is not running")
        if not guest.agent:
            raise Failure(500, "No QEMU guest agent configured")
        if self._clock() < guest.running_since + guest.agent_delay:
            raise Failure(500, "QEMU guest agent is not running")
        interfaces = _interfaces(guest, ("ipv4", "ipv6"))
        for interface in interfaces:
            interface["statistics"] = {"rx-bytes": 0, "tx-bytes": 0}

        return {"result": interfaces}

    def _lxc_interfaces(self, token: Token, args: Args, params: Args) -> Any:
        guest = self._guest(args)
        if guest.status != "running":
            return None
        interfaces = _interfaces(guest, ("inet", "inet6"))
        for interface in interfaces:
            interface["hwaddr"] = interface["hardware-address"]
            for address in interface["ip-addresses"]:
                family, text = address["ip-address-type"], address["ip-address"]
                interface.setdefault(family, f"{text}/{address['prefix']}")

        return interfaces

    def _config(self, token: Token, args: Args, params: Args) -> Any:
        guest = self._guest(args)
        config: dict[str, Any]
        if guest.kind == "qemu":
            config = {
                "name": guest.name,
                "cores": 2,
                "memory": "2048",
                "ostype": "l26",
                "scsi0": f"local-lvm:vm-{guest.vmid}-disk-0,size=8G",
                "net0": f"virtio={guest.mac},bridge=vmbr0",
            }
            if guest.agent:
                config["agent"] = "1"
            if guest.ipconfig is not None:
                config["ipconfig0"] = guest.ipconfig
        else:
            config = {
                "hostname": guest.name,
                "arch": "amd64",
                "cores": 1,
                "memory": 512,
                "ostype": "debian",
                "rootfs": f"local-lvm:vm-{guest.vmid}-disk-0,size=4G",
                "net0": f"name=eth0,bridge=vmbr0,hwaddr={guest.mac},"
                f"{guest.ipconfig or 'ip=dhcp'},type=veth",
            }
        if guest.tags:
            config["tags"] = ";".join(guest.tags)
        config["digest"] = hashlib.sha1(
            repr(sorted(config.items())).encode()
        ).hexdigest()

        return config

    # --- helpers ---------------------------------------------------------

    def _guest(self, args: Args) -> Guest:
        """Return the guest a node/kind/vmid path names, as PVE finds it."""
        guest = self.guests.get(int(args["vmid"]))
        kind = args["_kind"]
        if guest is None or guest.node != args["node"] or guest.kind != kind:
            folder = "qemu-server" if kind == "qemu" else "lxc"
            raise Failure(
                500,
                f"Configuration file 'nodes/{args['node']}/{folder}/"
                f"{args['vmid']}.conf' does not exist",
            )

        return guest

    def _guest_entry(self, guest: Guest) -> dict[str, Any]:
        """A guest as /cluster/resources lists it; sparse when its node is off."""
        entry: dict[str, Any] = {
            "id": f"{guest.kind}/{guest.vmid}",
            "type": guest.kind,
            "node": guest.node,
            "vmid": guest.vmid,
            "template": int(guest.template),
        }
        if guest.tags:
            entry["tags"] = ";".join(guest.tags)
        if guest.pool:
            entry["pool"] = guest.pool
        if not self.nodes[guest.node].online:
            return {**entry, "status": "unknown"}

        return {
            **entry,
            "name": guest.name,
            "status": guest.status,
            "maxcpu": 2,
            "maxmem": 2 * GIB,
            "maxdisk": 8 * GIB,
            "cpu": 0.01 if guest.status == "running" else 0,
            "mem": GIB // 4 if guest.status == "running" else 0,
            "disk": 0,
            "uptime": self._uptime(guest),
            "netin": 0,
            "netout": 0,
            "diskread": 0,
            "diskwrite": 0,
        }

    def _uptime(self, guest: Guest) -> int:
        """Seconds the guest has been running, 0 when stopped."""
        if guest.status != "running":
            return 0
        return int(self._clock() - guest.running_since)

    def _new_task(self, guest: Guest, token: Token, result: str) -> Task:
        """Make a start task with a real-format UPID."""
        pid, pstart, starttime = next(self._pids), 123456 + guest.vmid, int(time.time())
        kind = "qmstart" if guest.kind == "qemu" else "vzstart"
        upid = (
            f"UPID:{guest.node}:{pid:08X}:{pstart:08X}:{starttime:08X}:"
            f"{kind}:{guest.vmid}:{token.tokenid}:"
        )
        ends_at = self._clock() + guest.start_seconds

        return Task(
            upid,
            guest.node,
            guest.vmid,
            guest.kind,
            token.tokenid,
            pid,
            pstart,
            starttime,
            ends_at,
            result,
        )


def _started(exitstatus: str) -> bool:
    """Whether a start task's exit status means the guest runs."""
    return exitstatus == "OK" or exitstatus.startswith("WARNINGS: ")


def _denied(path: str, privileges: str) -> Failure:
    """A 403 worded as PVE words it."""
    return Failure(403, f"Permission check failed ({path}, {privileges})")


def _node_entry(node: Node) -> dict[str, Any]:
    """A node as /nodes and /cluster/resources list it."""
    entry: dict[str, Any] = {"id": f"node/{node.name}", "type": "node"}
    entry.update(node=node.name, status="online" if node.online else "offline")
    if node.online:
        entry.update(
            cpu=0.02,
            maxcpu=8,
            mem=4 * GIB,
            maxmem=32 * GIB,
            uptime=86400,
            level="",
            ssl_fingerprint=":".join(["AB"] * 32),
        )

    return entry


def _interfaces(guest: Guest, families: tuple[str, str]) -> list[dict[str, Any]]:
    """The guest's lo and eth0, address types named as in ``families``."""
    v4, v6 = families
    link_local = f"fe80::be24:11ff:fe00:{guest.vmid % 65536:x}"
    eth0 = [(guest.address, v4, 24), (guest.ipv6, v6, 64), (link_local, v6, 64)]
    lo = [("127.0.0.1", v4, 8), ("::1", v6, 128)]

    interfaces = [
        _interface("lo", "00:00:00:00:00:00", lo),
        _interface("eth0", guest.mac, eth0),
    ]
    for number, extra in enumerate(guest.extra_ipv4, start=1):
        interfaces.append(_interface(f"eth{number}", guest.mac, [(extra, v4, 24)]))

    return interfaces


def _interface(
    name: str, mac: str, addresses: list[tuple[str | None, str, int]]
) -> dict[str, Any]:
    """One interface as the agent and LXC report it."""
    listed = [
        {"ip-address": text, "ip-address-type": family, "prefix": prefix}
        for text, family, prefix in addresses
        if text
    ]

    return {"name": name, "hardware-address": mac, "ip-addresses": listed}


def _verify_parameters(schema: dict[str, Any], values: Args) -> None:
    """Reject parameters the schema does not declare or does not accept."""
    properties = schema.get("properties") or {}
    errors = {}
    for name, value in values.items():
        if name.startswith("_"):
            continue
        spec = properties.get(name)
        if spec is None:
            errors[name] = (
                "property is not defined in schema and the schema does not "
                "allow additional properties"
            )
        elif (problem := _check_value(spec, value)) is not None:
            errors[name] = problem
    for name, spec in properties.items():
        if not spec.get("optional") and name not in values:
            errors[name] = "property is missing and it is not optional"
    if errors:
        raise Failure(400, "Parameter verification failed.", errors)


def _check_value(spec: dict[str, Any], value: str) -> str | None:
    """Return what is wrong with one parameter's text, or None."""
    kind = spec.get("type")
    if kind == "integer":
        if re.fullmatch(r"-?\d+", value) is None:
            return f"type check ('integer') failed - got '{value}'"
        number = int(value)
        if number < spec.get("minimum", number) or number > spec.get("maximum", number):
            return (
                f"value must be between {spec.get('minimum')} and {spec.get('maximum')}"
            )
    if kind == "boolean" and value not in ("0", "1", "true", "false"):
        return f"type check ('boolean') failed - got '{value}'"
    if "enum" in spec and value not in spec["enum"]:
        return f"value '{value}' does not have a value in the enumeration"

    return None
