"""Limits that keep one client from hurting others, found by a review."""

from __future__ import annotations

import subprocess
import sys
import time

from appliance import access
from tests.harness import (
    ROOT,
    ApplianceUnderTest,
    Client,
    SSHDTarget,
    cert_path,
    keygen,
    register_grant,
)


def _raw(client: Client, *args: str) -> subprocess.CompletedProcess[str]:
    """Run tests/rawssh.py in the client's host."""
    return client.host.run([sys.executable, "-m", "tests.rawssh", *args], cwd=ROOT)


def test_a_flood_of_forged_offers_is_cut_off_and_kept_small(
    appliance: ApplianceUnderTest, client: Client, alice: str
) -> None:
    appliance.start()

    result = _raw(
        client,
        "offer-forged",
        appliance.host.address,
        str(appliance.port),
        alice,
        str(appliance.user_ca_file()),
        "20",
        "30000",
    )

    assert "refused" in result.stdout, result.stderr
    refusals = appliance.events("auth.refused", wait_for=7)
    reasons = [e["reason"] for e in refusals]
    assert "too many authentication attempts" in reasons
    assert len(refusals) <= 8
    assert all(len(e.get("key_id", "")) <= 64 for e in refusals)


def test_a_forged_ca_signature_is_refused_and_audited(
    appliance: ApplianceUnderTest, client: Client, alice: str
) -> None:
    register_grant(appliance, 1, alice, "web01")
    appliance.start()

    result = _raw(
        client,
        "offer-forged",
        appliance.host.address,
        str(appliance.port),
        alice,
        str(appliance.user_ca_file()),
        "1",
        "10",
    )

    # It passes the bastion's own checks; asyncssh's signature check fails
    # it, and the bastion still records why.
    assert "refused" in result.stdout, result.stderr
    phrase = "the certificate failed the signature checks"
    assert phrase in appliance.reasons("auth.refused", phrase)


def test_tunnels_per_connection_are_capped(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> None:
    key = keygen(client.directory / "id")
    appliance.start(ssh_max_tunnels_per_connection="2")
    appliance.issue(alice, "web01", key)

    result = _raw(
        client,
        "open-tunnels",
        appliance.host.address,
        str(appliance.port),
        alice,
        str(key),
        str(cert_path(key)),
        "web01:22",
        "3",
    )

    assert result.stdout.splitlines() == [
        "tunnel 0: opened",
        "tunnel 1: opened",
        "tunnel 2: refused: too many tunnels on this connection",
    ], result.stderr


def test_client_text_cannot_forge_a_log_line(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> None:
    key = keygen(client.directory / "id")
    appliance.start()
    appliance.issue(alice, "web01", key)
    forged = "x\n2099-01-01 00:00:00,000 INFO appliance.bastion: forged:22"

    _raw(
        client,
        "open-tunnels",
        appliance.host.address,
        str(appliance.port),
        alice,
        str(key),
        str(cert_path(key)),
        forged,
        "1",
    )

    appliance.events("tunnel.refused", wait_for=1)
    lines = appliance.log.read_text().splitlines()
    assert not any(line.startswith("2099-01-01") for line in lines)


def test_revocation_closes_every_connection_of_a_certificate(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> None:
    key = keygen(client.directory / "id")
    appliance.start()
    issued = appliance.issue(alice, "web01", key)
    config = client.config(appliance, key, [target])
    sessions = [client.stream(config) for _ in range(3)]
    appliance.events("tunnel.opened", wait_for=3)

    revoked_at = time.monotonic()
    access.revoke(appliance.state, issued.serial, by="test")
    for session in sessions:
        session.wait(timeout=20)

    assert time.monotonic() - revoked_at < 2.5


def test_a_locked_address_still_admits_a_good_certificate(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> None:
    key = keygen(client.directory / "id")
    appliance.start()
    appliance.issue(alice, "web01", key)
    bad = client.config(appliance, key, [target], bastion_user="nosuchuser")
    for _ in range(6):
        client.ssh(bad, "web01", "true")
    assert appliance.reasons("auth.refused", "is locked")

    good = client.ssh(client.config(appliance, key, [target]), "web01", "echo in")

    assert good.stdout.strip() == "in", good.stderr
