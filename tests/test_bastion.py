"""The bastion through real OpenSSH: ssh -J to real sshd targets."""

from __future__ import annotations

from pathlib import Path

from tests.harness import ApplianceUnderTest, Client, SSHDTarget, keygen


def test_ssh_jump_reaches_target_and_is_audited(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> None:
    key = keygen(client.directory / "id")
    issued = appliance.issue(alice, "web01", key)
    appliance.start()
    config = client.config(appliance, key, [target])

    result = client.ssh(config, "web01", "echo reached $(id -un)")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"reached {alice}"
    closed = appliance.events("tunnel.closed", wait_for=1)[0]
    assert closed["serial"] == issued.serial
    assert closed["target"] == "web01"
    assert closed["detail"]["bytes_to_target"] > 0
    assert closed["detail"]["bytes_from_target"] > 0
