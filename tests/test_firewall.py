"""The appliance's nftables ruleset, checked by nft and in namespaces."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import Config, NetworkSection
from appliance.firewall import TABLE, generate_ruleset
from appliance.inventory import add_static_target
from tests.harness import ApplianceUnderTest, Client, SSHDTarget, keygen
from tests.netlab import IS_ROOT, Network


def _config(clients: tuple[str, ...], targets: tuple[str, ...]) -> Config:
    network = NetworkSection(client_networks=clients, target_networks=targets)
    return dataclasses.replace(Config(), network=network)


def test_ruleset_names_the_networks_and_ports() -> None:
    ruleset = generate_ruleset(
        _config(("192.0.2.0/24", "2001:db8::/32"), ("198.51.100.7",))
    )

    assert "ip saddr { 192.0.2.0/24 } tcp dport { 2222, 8443 } accept" in ruleset
    assert "ip6 saddr { 2001:db8::/32 } tcp dport { 2222, 8443 } accept" in ruleset
    assert "ip daddr { 198.51.100.7/32 } tcp dport { 22 } accept" in ruleset
    assert "policy drop;" in ruleset


def test_ruleset_is_valid_nftables(tmp_path: Path) -> None:
    path = tmp_path / "ruleset.nft"
    path.write_text(generate_ruleset(_config(("192.0.2.0/24",), ("10.0.0.0/8",))))

    check = subprocess.run(
        ["nft", "-c", "-f", str(path)], capture_output=True, text=True
    )

    assert check.returncode == 0, check.stderr


def test_firewall_show_prints_the_ruleset(appliance: ApplianceUnderTest) -> None:
    shown = appliance.cli("firewall", "show").stdout

    assert shown.startswith(f"table inet {TABLE}\n")


_CONNECT = (
    "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)"
)


@pytest.fixture
def firewalled(
    appliance: ApplianceUnderTest, client: Client, target: SSHDTarget
) -> Iterator[ApplianceUnderTest]:
    """The bastion's host with the ruleset loaded, removed afterwards."""
    config = appliance.state_path / "config.toml"
    config.write_text(
        config.read_text()
        .replace(
            "client_networks = []", f'client_networks = ["{client.host.address}/32"]'
        )
        .replace(
            "target_networks = []", f'target_networks = ["{target.host.address}/32"]'
        )
    )
    ruleset = appliance.cli("firewall", "show").stdout
    loaded = appliance.host.run(["nft", "-f", "-"], input=ruleset)
    assert loaded.returncode == 0, loaded.stderr
    yield appliance
    appliance.host.run(["nft", "delete", "table", "inet", TABLE])


@pytest.mark.skipif(not IS_ROOT, reason="needs network namespaces")
def test_only_client_networks_get_in_and_only_targets_get_out(
    firewalled: ApplianceUnderTest,
    client: Client,
    target: SSHDTarget,
    alice: str,
    network: Network,
) -> None:
    appliance = firewalled
    outsider = network.host("outsider")
    add_static_target(appliance.state.engine, "web02", outsider.address, 22)
    key = keygen(client.directory / "id")
    appliance.start(ssh_connect_timeout="2s")
    appliance.issue(alice, "web01", key)
    inside = client.ssh(client.config(appliance, key, [target]), "web01", "echo in")
    appliance.issue(alice, "web02", key)
    config = client.config(appliance, key, [target])

    started = time.monotonic()
    probe = outsider.run(
        ["python3", "-c", _CONNECT, appliance.host.address, str(appliance.port)], 10
    )
    blocked = client.ssh(config, "-W", "web02:22", "bastion")

    assert inside.stdout.strip() == "in", inside.stderr
    assert probe.returncode != 0 and time.monotonic() - started >= 2.5
    assert "target 'web02' did not answer within 2s" in blocked.stderr
