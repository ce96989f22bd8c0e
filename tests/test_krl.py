"""The KRL that ``ca krl`` writes makes a real sshd refuse revoked serials."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.access import revoke
from appliance.inventory import add_static_target
from tests.audit_fixtures import direct_config, start_web01
from tests.harness import ApplianceUnderTest, Client, SSHDTarget, keygen
from tests.netlab import Network


@pytest.fixture
def guarded(
    network: Network, appliance: ApplianceUnderTest, tmp_path: Path, person: str
) -> Iterator[SSHDTarget]:
    """A real sshd called web01 that reads the appliance's KRL."""
    directory = tmp_path / "web01"
    directory.mkdir()
    krl = directory / "revoked.krl"
    appliance.cli("ca", "krl", "--out", str(krl))
    sshd = start_web01(
        network, appliance, directory, extra_config=f"RevokedKeys {krl}\n"
    )
    yield sshd
    sshd.stop()


def test_sshd_refuses_a_revoked_certificate_and_accepts_another(
    appliance: ApplianceUnderTest, guarded: SSHDTarget, client: Client, alice: str
) -> None:
    kept, revoked = keygen(client.directory / "kept"), keygen(client.directory / "gone")
    appliance.issue(alice, "web01", kept)
    serial = appliance.issue(alice, "web01", revoked).serial
    for key in (kept, revoked):
        result = client.ssh(direct_config(client, guarded, key), "web01", "true")
        assert result.returncode == 0, f"empty KRL refused {key.name}: {result}"

    revoke(appliance.state, serial, by="admin", reason="laptop stolen")
    appliance.cli("ca", "krl", "--out", str(guarded.directory / "revoked.krl"))

    refused = client.ssh(direct_config(client, guarded, revoked), "web01", "true")
    accepted = client.ssh(direct_config(client, guarded, kept), "web01", "true")
    assert refused.returncode == 255
    assert "revoked" in guarded.log.read_text()
    assert accepted.returncode == 0, accepted.stderr


def test_krl_lists_exactly_the_revoked_serials(
    appliance: ApplianceUnderTest, client: Client, alice: str, tmp_path: Path
) -> None:
    add_static_target(appliance.state.engine, "web01", "192.0.2.1", 22)
    keys = [keygen(client.directory / f"k{i}") for i in range(3)]
    serials = [appliance.issue(alice, "web01", key).serial for key in keys]
    for serial in serials[:2]:
        revoke(appliance.state, serial, by="admin")

    appliance.cli("ca", "krl", "--out", str(tmp_path / "krl"))
    listing = subprocess.run(
        ["ssh-keygen", "-Q", "-l", "-f", str(tmp_path / "krl")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    assert "# KRL version 2" in listing
    assert sorted(int(n) for n in _listed_serials(listing)) == sorted(serials[:2])


def _listed_serials(listing: str) -> list[str]:
    """The serials in ``ssh-keygen -Q -l`` output: 'serial: N' lines."""
    return [
        line.split(":", 1)[1].strip()
        for line in listing.splitlines()
        if line.startswith("serial:")
    ]
