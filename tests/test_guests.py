"""Proxmox guests as targets: listing, names, addresses and start-and-wait."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import ConfigError, NotFound
from appliance.guests import (
    AmbiguousName,
    Guest,
    GuestAgentNotRunning,
    GuestInventory,
    GuestNotReady,
    NoIPv4Address,
    StartFailed,
    StartStage,
    StartStillRunning,
    parse_tags,
)
from appliance.proxmox import NodeOffline, PrivilegeMissing, ProxmoxClient, run_sync
from appliance.secret import Secret
from tests.harness import SSHDTarget, keygen
from tests.netlab import Host
from tests.pvedouble import backing
from tests.pvedouble.server import PVEDouble

pytest_plugins = ["tests.pvedouble.fixtures"]


def _address(inventory: GuestInventory, name: str) -> str:
    """Resolve a guest and look up its address."""
    return run_sync(inventory.address(run_sync(inventory.resolve(name))))


def _starts(pve: PVEDouble) -> list[str]:
    """The paths of the start calls the double received."""
    return [e.path for e in pve.exchanges if e.method == "POST"]


def test_tags_are_split_as_pve_writes_them() -> None:
    assert parse_tags("jit;web") == ("jit", "web")
    assert parse_tags("jit, web db") == ("jit", "web", "db")
    assert parse_tags("") == ()


def test_guests_with_the_expose_tag_are_listed_with_their_details(
    pve: PVEDouble, pve_inventory: GuestInventory
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1", status="running", tags=("jit", "web"))
    pve.cluster.add_guest(102, "ct01", "pve2", kind="lxc", pool="prod")
    pve.cluster.add_guest(103, "hidden", "pve1", tags=("other",))
    pve.cluster.add_guest(104, "tmpl", "pve1", template=True)

    guests = run_sync(pve_inventory.guests())

    assert guests == [
        Guest(101, "web01", "pve1", "qemu", "running", ("jit", "web"), "", True),
        Guest(102, "ct01", "pve2", "lxc", "stopped", ("jit",), "prod", True),
    ]


def test_pools_and_vmids_named_by_policy_are_listed_too(
    pve: PVEDouble, pve_client: ProxmoxClient
) -> None:
    pve.cluster.add_guest(101, "a", "pve1", tags=(), pool="prod")
    pve.cluster.add_guest(102, "b", "pve1", tags=())
    pve.cluster.add_guest(103, "c", "pve1", tags=())
    inventory = GuestInventory(pve_client, expose_tag="", pools=["prod"], vmids=[103])

    guests = run_sync(inventory.guests())

    assert [g.vmid for g in guests] == [101, 103]


def test_the_list_is_cached_for_cache_seconds(
    pve: PVEDouble, pve_client: ProxmoxClient
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1")
    inventory = GuestInventory(pve_client, cache_seconds=60)

    async def list_three_times() -> None:
        await inventory.guests()
        pve.cluster.add_guest(102, "web02", "pve1")
        assert len(await inventory.guests()) == 1
        assert len(await inventory.guests(refresh=True)) == 2

    asyncio.run(list_three_times())

    listings = [e for e in pve.exchanges if e.template == "/cluster/resources"]
    assert len(listings) == 2
    assert listings[0].params == {"type": "vm"}


def test_guests_of_an_offline_node_are_unavailable_and_cannot_start(
    pve: PVEDouble, pve_inventory: GuestInventory
) -> None:
    pve.cluster.add_guest(201, "web01", "pve2")
    pve.cluster.add_guest(202, "db01", "pve2")
    run_sync(pve_inventory.guests())  # db01's name is seen while pve2 is up
    pve.cluster.set_online("pve2", False)

    guests = run_sync(pve_inventory.guests())
    with pytest.raises(NodeOffline) as caught:
        run_sync(pve_inventory.start_and_wait(guests[1]))

    assert [(g.name, g.status, g.available) for g in guests] == [
        ("web01", "unknown", False),
        ("db01", "unknown", False),
    ]
    assert "node offline" in str(caught.value)
    assert not _starts(pve)


def test_a_guest_never_seen_online_is_listed_without_a_name(
    pve: PVEDouble, pve_inventory: GuestInventory
) -> None:
    pve.cluster.add_guest(201, "web01", "pve2")
    pve.cluster.set_online("pve2", False)

    guest = run_sync(pve_inventory.resolve("201"))

    assert (guest.name, guest.available, str(guest)) == ("", False, "guest (201)")


def test_two_guests_with_one_name_need_the_node_or_the_id(
    pve: PVEDouble, pve_inventory: GuestInventory
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1")
    pve.cluster.add_guest(201, "web01", "pve2")
    pve.cluster.add_guest(102, "db01", "pve1")

    with pytest.raises(AmbiguousName) as caught:
        run_sync(pve_inventory.resolve("web01"))

    assert "web01.pve1 (101), web01.pve2 (201)" in str(caught.value)
    assert "ambiguous" in str(caught.value)
    assert run_sync(pve_inventory.resolve("web01.pve2")).vmid == 201
    assert run_sync(pve_inventory.resolve("101")).node == "pve1"
    assert run_sync(pve_inventory.resolve("db01")).vmid == 102


def test_a_name_that_is_not_a_target_is_not_found(
    pve: PVEDouble, pve_inventory: GuestInventory
) -> None:
    pve.cluster.add_guest(103, "hidden", "pve1", tags=())

    for name in ("nosuch", "hidden", "103", "web01.pve9"):
        with pytest.raises(NotFound):
            run_sync(pve_inventory.resolve(name))


def test_an_explicit_address_wins(pve: PVEDouble, pve_client: ProxmoxClient) -> None:
    pve.cluster.add_guest(101, "web01", "pve1", status="running")
    inventory = GuestInventory(pve_client, addresses={"web01": "198.51.100.7"})

    guest = run_sync(inventory.resolve("web01"))

    assert run_sync(inventory.address(guest)) == "198.51.100.7"
    assert not [e for e in pve.exchanges if "agent" in e.path]


def test_the_agent_s_address_skips_lo_and_link_local(
    pve: PVEDouble, pve_inventory: GuestInventory
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1", status="running")

    address = _address(pve_inventory, "101")

    assert address == "192.0.2.101"


def test_target_networks_are_preferred(
    pve: PVEDouble, pve_client: ProxmoxClient
) -> None:
    pve.cluster.add_guest(
        101, "web01", "pve1", status="running", extra_ipv4=("203.0.113.5",)
    )
    inventory = GuestInventory(pve_client, target_networks=["203.0.113.0/24"])

    address = _address(inventory, "101")

    assert address == "203.0.113.5"


def test_a_bad_target_network_is_a_config_error(pve_client: ProxmoxClient) -> None:
    with pytest.raises(ConfigError) as caught:
        GuestInventory(pve_client, target_networks=["10.0.0.0/33"])

    assert "proxmox.target_networks: '10.0.0.0/33'" in str(caught.value)


def test_a_guest_agent_that_is_not_running_is_a_clear_error(
    pve: PVEDouble, pve_inventory: GuestInventory
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1", status="running", agent_delay=1e9)
    guest = run_sync(pve_inventory.resolve("101"))

    with pytest.raises(GuestAgentNotRunning) as caught:
        run_sync(pve_inventory.address(guest))

    assert "QEMU guest agent is not running" in str(caught.value)
    assert "web01 (101)" in str(caught.value)


def test_without_the_agent_the_cloud_init_ipconfig_answers(
    pve: PVEDouble, pve_inventory: GuestInventory
) -> None:
    pve.cluster.add_guest(
        101,
        "web01",
        "pve1",
        status="running",
        agent=False,
        ipconfig="ip=198.51.100.20/24,gw=198.51.100.1",
    )
    guest = run_sync(pve_inventory.resolve("101"))

    assert run_sync(pve_inventory.address(guest)) == "198.51.100.20"


@pytest.mark.parametrize("ipv6", ["fd00::101", None])
def test_a_guest_with_only_ipv6_or_nothing_has_no_ipv4_address(
    pve: PVEDouble, pve_inventory: GuestInventory, ipv6: str | None
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1", status="running", ipv4=None, ipv6=ipv6)
    guest = run_sync(pve_inventory.resolve("101"))

    with pytest.raises(NoIPv4Address) as caught:
        run_sync(pve_inventory.address(guest))

    assert "no IPv4 address" in str(caught.value)
    if ipv6:
        assert ipv6 in str(caught.value)


def test_a_container_reports_its_interfaces(
    pve: PVEDouble, pve_inventory: GuestInventory
) -> None:
    pve.cluster.add_guest(102, "ct01", "pve1", kind="lxc", status="running")

    address = _address(pve_inventory, "ct01")

    assert address == "192.0.2.102"


def test_a_stopped_container_falls_back_to_its_static_ip(
    pve: PVEDouble, pve_inventory: GuestInventory
) -> None:
    pve.cluster.add_guest(
        102, "ct01", "pve1", kind="lxc", ipconfig="ip=198.51.100.30/24,gw=198.51.100.1"
    )
    pve.cluster.add_guest(103, "ct02", "pve1", kind="lxc")

    static = _address(pve_inventory, "ct01")
    with pytest.raises(NoIPv4Address):
        _address(pve_inventory, "ct02")

    assert static == "198.51.100.30"


def _start(inventory: GuestInventory, name: str, **options: object) -> str:
    """Resolve and start a guest; return its address."""
    guest = run_sync(inventory.resolve(name))
    return run_sync(inventory.start_and_wait(guest, **options))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["qemu", "lxc"])
def test_a_stopped_guest_is_started_and_waited_for(
    pve: PVEDouble,
    pve_inventory: GuestInventory,
    listener: socket.socket,
    kind: str,
) -> None:
    guest = pve.cluster.add_guest(
        101, "web01", "pve1", kind=kind, backing=backing(listener)
    )
    stages: list[tuple[StartStage, str]] = []

    address = _start(
        pve_inventory,
        "web01",
        port=guest.backing_port,
        progress=lambda stage, detail: stages.append((stage, detail)),
    )

    assert address == "127.0.0.1"
    assert [stage for stage, _ in stages] == list(StartStage)
    assert stages[0][1].startswith("UPID:pve1:")
    assert stages[2][1] == guest.backing
    assert _starts(pve) == [f"/nodes/pve1/{kind}/101/status/start"]


def test_a_running_guest_is_not_started_again(
    pve: PVEDouble, pve_inventory: GuestInventory, listener: socket.socket
) -> None:
    guest = pve.cluster.add_guest(
        101, "web01", "pve1", status="running", backing=backing(listener)
    )

    _start(pve_inventory, "web01", port=guest.backing_port)

    assert not _starts(pve)


def test_warnings_from_the_start_task_still_mean_started(
    pve: PVEDouble, pve_inventory: GuestInventory, listener: socket.socket
) -> None:
    guest = pve.cluster.add_guest(
        101, "web01", "pve1", backing=backing(listener), start_result="WARNINGS: 1"
    )

    assert _start(pve_inventory, "web01", port=guest.backing_port)


def test_a_start_task_that_fails_shows_its_error(
    pve: PVEDouble, pve_inventory: GuestInventory
) -> None:
    error = "start failed: QEMU exited with code 1"
    pve.cluster.add_guest(101, "web01", "pve1", start_result=error, start_seconds=0.05)

    with pytest.raises(StartFailed) as caught:
        _start(pve_inventory, "web01")

    assert caught.value.exitstatus == error
    assert str(caught.value) == f"starting web01 (101) failed: {error}"
    assert caught.value.upid.startswith("UPID:pve1:")


def test_a_start_still_running_at_the_bound_names_its_task(
    pve: PVEDouble, pve_inventory: GuestInventory
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1", start_seconds=30)
    started = time.monotonic()

    with pytest.raises(StartStillRunning) as caught:
        _start(pve_inventory, "web01", timeout=0.5)

    assert time.monotonic() - started < 1.5
    assert caught.value.upid.startswith("UPID:pve1:")
    assert caught.value.upid in str(caught.value)


def test_a_guest_whose_port_stays_closed_is_not_ready_in_time(
    pve: PVEDouble, pve_inventory: GuestInventory
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pve.cluster.add_guest(101, "web01", "pve1", backing=f"127.0.0.1:{port}")

    with pytest.raises(GuestNotReady, match=f"port {port} at 127.0.0.1"):
        _start(pve_inventory, "web01", port=port, timeout=1)


def test_starting_needs_the_power_privilege(
    pve: PVEDouble, listener: socket.socket
) -> None:
    pve.cluster.add_token("audit@pve!jit", "s", {"/vms": {"VM.Audit"}})
    pve.cluster.add_guest(101, "web01", "pve1")
    client = ProxmoxClient(
        pve.url, "audit@pve!jit", Secret("s"), verify=str(pve.tls.ca)
    )
    inventory = GuestInventory(client)

    with pytest.raises(PrivilegeMissing, match=r"lacks VM\.PowerMgmt"):
        _start(inventory, "web01")
    client.close()


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SSHDTarget]:
    """A real sshd on 127.0.0.1 standing in for a guest."""
    ca = keygen(tmp_path / "user_ca")
    host = Host("guest", "127.0.0.1")
    target = SSHDTarget("guest", host, tmp_path / "sshd", Path(f"{ca}.pub"))
    target.port = host.free_port(22)
    yield target.start()
    target.stop()


def test_a_started_guest_ends_at_a_real_sshd(
    pve: PVEDouble, pve_inventory: GuestInventory, sshd: SSHDTarget
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1", backing=f"127.0.0.1:{sshd.port}")

    address = _start(pve_inventory, "web01", port=sshd.port)
    with socket.create_connection((address, sshd.port), timeout=5) as connection:
        banner = connection.recv(64)

    assert banner.startswith(b"SSH-2.0-OpenSSH")
