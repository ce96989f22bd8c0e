"""One inventory of targets: static hosts and Proxmox guests, by name."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from appliance import access, cli, inventory
from appliance.errors import AmbiguousName, ConfigError, NotFound, Refused
from appliance.identity import add_user
from appliance.state import State, initialize
from tests.guest_fixtures import configure_proxmox
from tests.harness import keygen
from tests.pvedouble import PVEDouble

pytest_plugins = ["tests.pvedouble.fixtures"]


@pytest.fixture
def state_path(tmp_path: Path) -> Iterator[Path]:
    """A fresh state directory, not yet pointed at Proxmox."""
    path = tmp_path / "state"
    initialize(path).engine.dispose()
    yield path


@contextmanager
def open_state(state_path: Path, pve: PVEDouble, **options: Any) -> Iterator[State]:
    """Point the state at the double, then open it."""
    configure_proxmox(state_path, pve, cache_seconds="1s", **options)
    state = State.open(state_path)
    yield state
    state.engine.dispose()


@pytest.fixture
def state(state_path: Path, pve: PVEDouble) -> Iterator[State]:
    """A state whose [proxmox] section points at the double."""
    with open_state(state_path, pve) as opened:
        yield opened


def test_static_targets_and_guests_are_listed_together(
    state: State, pve: PVEDouble
) -> None:
    inventory.add_static_target(state.engine, "legacy", "192.0.2.10", 22)
    pve.cluster.add_guest(101, "web01", "pve1", status="running", pool="web")
    pve.cluster.add_guest(102, "ct01", "pve2", kind="lxc", tags=("jit", "db"))
    pve.cluster.add_guest(103, "hidden", "pve2", tags=())

    listing = inventory.list_targets(state)

    assert not listing.problem
    assert [t.name for t in listing] == ["ct01", "legacy", "web01"]
    web01 = next(t for t in listing if t.name == "web01")
    assert (web01.kind, web01.node, web01.vmid, web01.status) == (
        "qemu",
        "pve1",
        101,
        "running",
    )
    assert web01.pool == "web" and web01.tags == ("jit",) and web01.available
    ct01 = next(t for t in listing if t.name == "ct01")
    assert (ct01.kind, ct01.status, ct01.tags) == ("lxc", "stopped", ("jit", "db"))


def test_a_proxmox_outage_keeps_static_targets_listed(
    state: State, pve: PVEDouble
) -> None:
    inventory.add_static_target(state.engine, "legacy", "192.0.2.10", 22)
    pve.cluster.add_guest(101, "web01", "pve1")
    pve.cluster.tokens.clear()  # every call now fails with 401

    listing = inventory.list_targets(state)

    assert [t.name for t in listing] == ["legacy"]
    assert listing.problem.startswith("Proxmox guests are unavailable: ")
    assert "refused API token" in listing.problem


def test_guests_of_an_offline_node_are_listed_as_unavailable(
    state: State, pve: PVEDouble
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1")
    pve.cluster.add_guest(201, "db01", "pve2")
    inventory.list_targets(state)  # the names are remembered from here
    pve.cluster.set_online("pve2", False)
    _forget_cached_guests(state)

    listing = inventory.list_targets(state)

    db01 = next(t for t in listing if t.vmid == 201)
    assert (db01.name, db01.status, db01.available) == ("db01", "unknown", False)


def test_without_proxmox_only_static_targets_count(state_path: Path) -> None:
    state = State.open(state_path)
    inventory.add_static_target(state.engine, "legacy", "192.0.2.10", 22)

    assert [t.name for t in inventory.list_targets(state)] == ["legacy"]
    with pytest.raises(NotFound, match="unknown target 'web01'"):
        inventory.resolve_target(state, "web01")
    assert inventory.guest_inventory(state.config) is None


def test_a_guest_is_found_by_name_name_node_or_vmid(
    state: State, pve: PVEDouble
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1", tags=("jit", "web"))

    by_name = inventory.resolve_target(state, "web01")
    by_node = inventory.resolve_target(state, "web01.pve1")
    by_vmid = inventory.resolve_target(state, "101")

    assert by_name == by_node == by_vmid
    assert by_name.name == "web01"
    assert by_name.tags == ("jit", "web") and by_name.guest is not None


def test_a_static_target_wins_over_a_guest_of_the_same_name(
    state: State, pve: PVEDouble
) -> None:
    inventory.add_static_target(state.engine, "web01", "192.0.2.10", 22)
    pve.cluster.add_guest(101, "web01", "pve1")

    static = inventory.resolve_target(state, "web01")
    guest = inventory.resolve_target(state, "101")

    assert static.kind == "static"
    assert (guest.kind, guest.name) == ("qemu", "web01.pve1")
    names = [t.name for t in inventory.list_targets(state)]
    assert names == ["web01", "web01.pve1"]


def test_two_guests_with_one_name_are_each_reachable_as_name_node(
    state: State, pve: PVEDouble
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1")
    pve.cluster.add_guest(201, "web01", "pve2")

    with pytest.raises(AmbiguousName, match=r"web01\.pve1 \(101\), web01\.pve2"):
        inventory.resolve_target(state, "web01")
    first = inventory.resolve_target(state, "web01.pve1")
    second = inventory.resolve_target(state, "201")

    assert (first.name, first.vmid) == ("web01.pve1", 101)
    assert (second.name, second.vmid) == ("web01.pve2", 201)
    listed = sorted(t.name for t in inventory.list_targets(state))
    assert listed == ["web01.pve1", "web01.pve2"]


def test_an_unknown_name_says_neither_kind_has_it(state: State) -> None:
    with pytest.raises(NotFound, match="no static target or Proxmox guest"):
        inventory.resolve_target(state, "nowhere")


def test_an_explicit_address_from_the_config_is_the_target_s_host(
    state_path: Path, pve: PVEDouble
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1")
    with open_state(state_path, pve, addresses=["web01=192.0.2.77"]) as state:
        target = inventory.resolve_target(state, "101")

        assert target.host == "192.0.2.77"


def test_a_malformed_address_entry_is_a_config_error(
    state_path: Path, pve: PVEDouble
) -> None:
    configure_proxmox(state_path, pve, addresses=["web01 192.0.2.77"])

    with pytest.raises(ConfigError, match=r"proxmox\.addresses: 'web01 192\.0\.2\.77'"):
        State.open(state_path)


def test_addresses_are_looked_up_for_running_guests_on_request(
    state: State, pve: PVEDouble
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1", status="running")
    pve.cluster.add_guest(102, "web02", "pve1")

    plain = inventory.list_targets(state)
    looked_up = inventory.list_targets(state, addresses=True)

    assert [t.host for t in plain] == ["", ""]
    assert [t.host for t in looked_up] == ["192.0.2.101", ""]


def test_one_inventory_and_its_cache_serve_the_whole_process(
    state: State, state_path: Path, pve: PVEDouble
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1")
    again = State.open(state_path)

    inventory.list_targets(state)
    asked = len(pve.exchanges)
    inventory.list_targets(again)
    asyncio.run(inventory.find_target(again, "web01"))

    assert inventory.guest_inventory(state.config) is inventory.guest_inventory(
        again.config
    )
    assert len(pve.exchanges) == asked
    again.engine.dispose()


def test_pools_and_vmids_that_policy_names_make_guests_targets(
    state_path: Path, pve: PVEDouble
) -> None:
    pve.cluster.add_guest(101, "untagged", "pve1", tags=(), pool="lab")
    pve.cluster.add_guest(102, "other", "pve1", tags=())
    pve.cluster.add_guest(103, "hidden", "pve1", tags=())
    rules = [{"pools": ["lab"]}, {"vmids": [102]}]
    with open_state(state_path, pve, policy=rules) as state:
        names = [t.name for t in inventory.list_targets(state)]

        assert names == ["other", "untagged"]


def test_a_certificate_for_a_guest_follows_its_tags_and_records_may_start(
    state_path: Path, pve: PVEDouble, tmp_path: Path
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1", tags=("jit", "web"))
    pve.cluster.add_guest(201, "db01", "pve2", tags=("jit", "db"))
    rules = [{"groups": ["ops"], "tags": ["web"], "may_start": True}]
    key = keygen(tmp_path / "id")
    with open_state(state_path, pve, policy=rules) as state:
        add_user(state.engine, "alice", groups=("ops",))

        issued = _issue(state, "alice", "101", key)
        with pytest.raises(Refused, match="no policy rule lets 'alice' reach 'db01'"):
            _issue(state, "alice", "db01", key)

        grant = access.find_grant(state.engine, issued.serial)
        assert (issued.target, grant.target, grant.may_start) == (
            "web01",
            "web01",
            True,
        )
        event = _event(state, "certificate.issued")
        assert (event["target"], event["detail"]["vmid"]) == ("web01", 101)


def test_a_grant_without_may_start_records_it(
    state_path: Path, pve: PVEDouble, tmp_path: Path
) -> None:
    pve.cluster.add_guest(101, "web01", "pve1", pool="web")
    key = keygen(tmp_path / "id")
    with open_state(state_path, pve, policy=[{"pools": ["web"]}]) as state:
        add_user(state.engine, "alice")

        issued = _issue(state, "alice", "web01", key)

        assert not access.find_grant(state.engine, issued.serial).may_start


def _issue(state: State, user: str, target: str, key: Path) -> access.Issued:
    return access.issue_certificate(
        state,
        user=user,
        target=target,
        reason="deploying the fix",
        public_key=key.with_suffix(".pub").read_text(),
    )


def _event(state: State, kind: str) -> dict[str, Any]:
    from appliance.audit import read_events

    events = read_events(state.engine, kind=kind, limit=1)
    return json.loads(json.dumps(events[0], default=str))


def _forget_cached_guests(state: State) -> None:
    guests = inventory.guest_inventory(state.config)
    assert guests is not None
    guests.invalidate()


# The commands: jit-bastion targets and jit-bastion proxmox check.


def _cli(state_path: Path, *args: str) -> int:
    return cli.main(["--state", str(state_path), *args])


def test_the_targets_command_lists_both_kinds_with_addresses(
    state: State,
    state_path: Path,
    pve: PVEDouble,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inventory.add_static_target(state.engine, "legacy", "192.0.2.10", 2222)
    pve.cluster.add_guest(101, "web01", "pve1", status="running")
    pve.cluster.add_guest(201, "ct01", "pve2", kind="lxc")

    status = _cli(state_path, "targets")
    text = capsys.readouterr().out
    as_json = _cli(state_path, "targets", "--json")
    rows = json.loads(capsys.readouterr().out)

    assert status == as_json == 0
    assert text.splitlines() == [
        "ct01\tlxc\tpve2\tstopped\t-",
        "legacy\tstatic\t-\trunning\t192.0.2.10:2222",
        "web01\tqemu\tpve1\trunning\t192.0.2.101:22",
    ]
    assert rows[2] == {
        "name": "web01",
        "kind": "qemu",
        "node": "pve1",
        "vmid": 101,
        "status": "running",
        "address": "192.0.2.101:22",
    }


def test_the_targets_command_shows_offline_nodes_and_outages(
    state: State,
    state_path: Path,
    pve: PVEDouble,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inventory.add_static_target(state.engine, "legacy", "192.0.2.10", 22)
    pve.cluster.add_guest(201, "db01", "pve2", status="running")
    pve.cluster.set_online("pve2", False)

    offline = _cli(state_path, "targets")
    listed = capsys.readouterr().out
    pve.cluster.tokens.clear()
    _forget_cached_guests(state)
    outage = _cli(state_path, "targets")
    out, err = capsys.readouterr()

    assert offline == 0
    assert "201\tqemu\tpve2\tunknown (node offline)\t-" in listed
    assert outage == 1
    assert out == "legacy\tstatic\t-\trunning\t192.0.2.10:22\n"
    assert "jit-bastion: Proxmox guests are unavailable: " in err


def test_proxmox_check_prints_the_version_and_each_privilege(
    state: State, state_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = _cli(state_path, "proxmox", "check")

    out = capsys.readouterr().out
    assert status == 0
    assert out.startswith("Proxmox VE 9.1.3 at https://127.0.0.1:")
    assert "token bastion@pve!jit" in out
    for privilege in ("VM.Audit", "VM.PowerMgmt", "VM.GuestAgent.Audit"):
        assert f"{privilege}\tok" in out


def test_proxmox_check_fails_when_the_token_lacks_a_privilege(
    state: State, state_path: Path, pve: PVEDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    pve.cluster.tokens["bastion@pve!jit"].acl = {"/": frozenset({"VM.Audit"})}

    status = _cli(state_path, "proxmox", "check")

    out, err = capsys.readouterr()
    assert status == 1
    assert "VM.PowerMgmt\tmissing" in out
    assert "VM.Audit\tok" in out
    assert "lacks VM.PowerMgmt, VM.GuestAgent.Audit" in err


def test_proxmox_check_without_proxmox_says_it_is_not_configured(
    state_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = _cli(state_path, "proxmox", "check")

    assert status == 2
    assert "proxmox.url is empty" in capsys.readouterr().err


def test_the_web_ui_offers_guests_that_policy_lets_a_person_reach(
    state_path: Path, pve: PVEDouble
) -> None:
    from appliance.identity import find_user
    from webui.targets import reachable_targets

    pve.cluster.add_guest(101, "web01", "pve1", tags=("jit", "web"))
    pve.cluster.add_guest(201, "db01", "pve2", tags=("jit", "db"))
    rules = [{"groups": ["ops"], "tags": ["web"], "max_ttl": "1h"}]
    with open_state(state_path, pve, policy=rules) as state:
        add_user(state.engine, "alice", groups=("ops",))

        offered = reachable_targets(state, find_user(state.engine, "alice"))

        assert [(t.name, t.max_ttl) for t in offered] == [("web01", 3600)]
