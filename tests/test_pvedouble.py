"""The Proxmox double answers as PVE does, checked against the official schema."""

from __future__ import annotations

import asyncio
from typing import Any

import jsonschema
import pytest
import requests

from appliance.proxmox import APIError, NodeOffline, ProxmoxClient
from tests.pvedouble import TOKEN_ID, TOKEN_SECRET
from tests.pvedouble.cluster import ROUTES
from tests.pvedouble.schema import returns_validator, translate
from tests.pvedouble.server import Exchange, PVEDouble

pytest_plugins = ["tests.pvedouble.fixtures"]

LXC_INTERFACES = ("GET", "/nodes/{node}/lxc/{vmid}/interfaces")
#: Where real PVE departs from its own schema, and the double follows PVE:
#: a stopped container's interfaces are null, though the schema says array.
KNOWN_DEVIATIONS = {LXC_INTERFACES: None}


def _populate(pve: PVEDouble) -> None:
    """Guests in every state the scripted session visits."""
    add = pve.cluster.add_guest
    add(
        101,
        "web01",
        "pve1",
        status="running",
        tags=("jit", "web"),
        pool="prod",
        ipconfig="ip=192.0.2.11/24,gw=192.0.2.1",
    )
    add(
        102,
        "ct01",
        "pve1",
        kind="lxc",
        start_seconds=0.05,
        ipconfig="ip=192.0.2.12/24,gw=192.0.2.1",
    )
    add(
        103,
        "slow",
        "pve1",
        start_result="WARNINGS: 1",
        start_seconds=0.3,
        agent_delay=0.3,
    )
    add(
        104,
        "broken",
        "pve1",
        start_seconds=0.05,
        start_result="start failed: QEMU exited with code 1",
    )
    add(105, "v6only", "pve1", status="running", ipv4=None, ipv6="fd00::105")
    add(106, "noagent", "pve1", status="running", agent=False, tags=())
    add(107, "tmpl", "pve1", template=True)
    add(201, "web01", "pve2", status="running")


async def _wait_task(client: ProxmoxClient, upid: str) -> dict[str, Any]:
    """Poll a task until it stops."""
    while (task := await client.task_status("pve1", upid))["status"] == "running":
        await asyncio.sleep(0.05)
    return task


async def _agent_reply(client: ProxmoxClient, vmid: int) -> None:
    """Ask the agent, accepting its 500 while it is down."""
    try:
        await client.agent_interfaces("pve1", vmid)
    except APIError as exc:  # the exchange is recorded either way
        assert exc.status == 500


async def _session(pve: PVEDouble, client: ProxmoxClient) -> None:
    """Call every endpoint in every state the product meets."""
    await client.check()
    await client.request("GET", "access/permissions", path="/vms/101")
    await client.nodes()
    await client.cluster_guests()
    await client.request("GET", "cluster/resources")
    await client.request("GET", "cluster/resources", type="node")
    for kind, vmid in (("qemu", 101), ("qemu", 103), ("lxc", 102)):
        await client.guest_status("pve1", kind, vmid)
        await client.guest_config("pve1", kind, vmid)
    for vmid in (101, 105, 106, 103):
        await _agent_reply(client, vmid)
    await client.container_interfaces("pve1", 102)
    upids = [
        await client.start_guest("pve1", k, v)
        for k, v in (("lxc", 102), ("qemu", 103), ("qemu", 104))
    ]
    await _agent_reply(client, 103)
    for upid in upids:
        await _wait_task(client, upid)
    await _agent_reply(client, 103)
    await asyncio.sleep(0.3)
    await _agent_reply(client, 103)
    await client.container_interfaces("pve1", 102)
    await client.guest_status("pve1", "lxc", 102)
    pve.cluster.set_online("pve2", False)
    await client.cluster_guests()
    await client.nodes()
    with pytest.raises(NodeOffline, match="595"):
        await client.guest_status("pve2", "qemu", 201)


def _check(exchange: Exchange) -> None:
    """Validate one answer: data against ``returns``, errors as PVE's."""
    if exchange.status != 200:
        assert exchange.body.get("data", "missing") is None, exchange
        return
    key = (exchange.method, exchange.template)
    data = exchange.body["data"]
    if key in KNOWN_DEVIATIONS and data == KNOWN_DEVIATIONS[key]:
        return
    errors = list(returns_validator(*key).iter_errors(data))
    assert not errors, f"{exchange.method} {exchange.path}: {errors[0].message}"


def test_every_answer_validates_against_the_official_schema(
    pve: PVEDouble, pve_client: ProxmoxClient
) -> None:
    _populate(pve)
    asyncio.run(_session(pve, pve_client))

    for exchange in pve.exchanges:
        _check(exchange)
    answered = {(e.method, e.template) for e in pve.exchanges if e.status == 200}
    assert answered == {(method, template) for method, template, _ in ROUTES}


def test_the_session_visits_every_state(
    pve: PVEDouble, pve_client: ProxmoxClient
) -> None:
    _populate(pve)
    asyncio.run(_session(pve, pve_client))

    tasks = [
        e.body["data"] for e in pve.exchanges if e.template.endswith("{upid}/status")
    ]
    assert {t["status"] for t in tasks} == {"running", "stopped"}
    assert {t.get("exitstatus") for t in tasks} >= {
        "OK",
        "WARNINGS: 1",
        "start failed: QEMU exited with code 1",
    }
    reasons = {e.reason for e in pve.exchanges if e.status != 200}
    assert reasons >= {
        "QEMU guest agent is not running",
        "No QEMU guest agent configured",
        "VM 103 is not running",
        "No route to host",
    }
    interfaces = [
        e.body["data"] for e in pve.exchanges if e.template == LXC_INTERFACES[1]
    ]
    assert interfaces[0] is None and interfaces[-1]
    offline = [
        entry
        for e in pve.exchanges
        if e.template == "/cluster/resources"
        for entry in e.body["data"] or []
        if entry.get("node") == "pve2" and entry.get("type") == "qemu"
    ]
    assert offline[-1]["status"] == "unknown" and "name" not in offline[-1]


def test_upids_have_the_real_format(pve: PVEDouble, pve_client: ProxmoxClient) -> None:
    pve.cluster.add_guest(101, "web01", "pve1")

    upid = asyncio.run(pve_client.start_guest("pve1", "qemu", 101))

    fields = upid.split(":")
    assert fields[0] == "UPID" and fields[1] == "pve1" and fields[-1] == ""
    assert all(len(f) == 8 and int(f, 16) >= 0 for f in fields[2:5])
    assert fields[5:8] == ["qmstart", "101", TOKEN_ID]


def _get(pve: PVEDouble, path: str, token: str, **params: str) -> requests.Response:
    """One raw request, to see status and reason phrase as sent."""
    return requests.get(
        f"{pve.url}/api2/json/{path}",
        params=params,
        headers={"Authorization": f"PVEAPIToken={token}"},
        verify=str(pve.tls.ca),
        timeout=5,
    )


def test_a_bad_token_is_answered_401(pve: PVEDouble) -> None:
    wrong = _get(pve, "version", f"{TOKEN_ID}=not-the-secret")
    unknown = _get(pve, "version", f"bastion@pve!other={TOKEN_SECRET}")
    missing = requests.get(
        f"{pve.url}/api2/json/version", verify=str(pve.tls.ca), timeout=5
    )

    assert (wrong.status_code, wrong.reason) == (401, "invalid token value!")
    assert unknown.status_code == 401
    assert (missing.status_code, missing.reason) == (401, "No ticket")
    assert wrong.json() == {"data": None}


def test_a_missing_privilege_is_named_in_the_reason(pve: PVEDouble) -> None:
    pve.cluster.add_token("audit@pve!ro", "s", {"/vms": {"VM.Audit"}})
    pve.cluster.add_guest(101, "web01", "pve1", status="running")

    reply = _get(
        pve, "nodes/pve1/qemu/101/agent/network-get-interfaces", "audit@pve!ro=s"
    )

    assert reply.status_code == 403
    privileges = "VM.GuestAgent.Audit|VM.GuestAgent.Unrestricted"
    assert reply.reason == f"Permission check failed (/vms/101, {privileges})"


def test_a_pool_acl_reaches_the_pool_s_guests_only(pve: PVEDouble) -> None:
    pve.cluster.add_token("pool@pve!jit", "s", {"/pool/prod": {"VM.Audit"}})
    pve.cluster.add_guest(101, "web01", "pve1", pool="prod")
    pve.cluster.add_guest(102, "web02", "pve1")

    listed = _get(pve, "cluster/resources", "pool@pve!jit=s", type="vm").json()["data"]
    other = _get(pve, "nodes/pve1/qemu/102/status/current", "pool@pve!jit=s")

    assert [entry["vmid"] for entry in listed] == [101]
    assert other.reason == "Permission check failed (/vms/102, VM.Audit)"


def test_undeclared_parameters_are_refused(pve: PVEDouble) -> None:
    token = f"{TOKEN_ID}={TOKEN_SECRET}"

    reply = _get(pve, "cluster/resources", token, kind="vm")
    bad_enum = _get(pve, "cluster/resources", token, type="guests")

    assert reply.status_code == 400 and "kind" in reply.json()["errors"]
    assert bad_enum.status_code == 400 and "type" in bad_enum.json()["errors"]


def test_an_offline_node_answers_595_for_its_own_endpoints(pve: PVEDouble) -> None:
    pve.cluster.add_guest(201, "web01", "pve2", status="running")
    pve.cluster.set_online("pve2", False)
    token = f"{TOKEN_ID}={TOKEN_SECRET}"

    reply = _get(pve, "nodes/pve2/qemu/201/status/current", token)
    listed = _get(pve, "cluster/resources", token, type="vm").json()["data"]

    assert (reply.status_code, reply.reason) == (595, "No route to host")
    assert listed == [
        {
            "id": "qemu/201",
            "type": "qemu",
            "node": "pve2",
            "vmid": 201,
            "template": 0,
            "tags": "jit",
            "status": "unknown",
        }
    ]


def test_unknown_paths_are_not_implemented(pve: PVEDouble) -> None:
    reply = _get(pve, "nodes/pve1/qemu/101/snapshot", f"{TOKEN_ID}={TOKEN_SECRET}")

    assert reply.status_code == 501


def test_translation_follows_the_proxmox_dialect() -> None:
    schema = translate(
        {
            "type": "object",
            "additionalProperties": 0,
            "properties": {
                "flag": {"type": "boolean"},
                "note": {"type": "string", "optional": 1, "pattern": "(?^:[a-z]+)"},
                "net[n]": {"type": "string", "optional": 1},
                "gone": {"type": ["string", "null"]},
            },
        }
    )
    check = jsonschema.Draft202012Validator(schema).is_valid

    assert check({"flag": 1, "gone": None, "net0": "x", "note": "abc"})
    assert check({"flag": True, "gone": "x"})
    assert not check({"flag": 2, "gone": None})
    assert not check({"flag": 0})
    assert not check({"flag": 0, "gone": None, "note": "ABC"})
    assert not check({"flag": 0, "gone": None, "other": 1})
    with pytest.raises(NotImplementedError, match="oneOf"):
        translate({"type": "object", "oneOf": []})
