"""Brute force at the SSH door: refused certificates and unknown logins
count towards the per-address lockout the web UI uses, both ways.

A locked address is refused for anything that fails a check, with the
lock as the reason; a certificate that verifies still gets in, so junk
from a shared NAT address cannot lock out everyone behind it."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import identity
from appliance.errors import AuthFailed
from appliance.secret import Secret
from tests.audit_fixtures import bastion_config
from tests.harness import (
    ApplianceUnderTest,
    Client,
    SSHDTarget,
    cert_path,
    keygen,
    sign,
)

LIMIT = "3"


def _tunnel(client: Client, config: Path, key: Path, login: str) -> bool:
    """Try ``ssh -W web01:22 LOGIN@bastion``; True when the tunnel opened."""
    argv = ["ssh", "-F", str(config), "-i", str(key), "-l", login]
    if cert_path(key).exists():
        argv += ["-o", f"CertificateFile={cert_path(key)}"]
    result = client.host.run([*argv, "-W", "web01:22", "bastion"], 30, input="")
    return result.returncode == 0 and result.stdout.startswith("SSH-2.0-")


def _reasons(appliance: ApplianceUnderTest) -> list[str]:
    return [str(e["reason"]) for e in appliance.events("auth.refused")]


@pytest.fixture
def granted(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> Path:
    """A key with a valid certificate, and the bastion started with a
    lockout after three failures."""
    key = keygen(client.directory / "good")
    appliance.issue(alice, "web01", key)
    appliance.start(web_lockout_failures=LIMIT)
    return key


def test_refused_certificates_lock_the_address(
    appliance: ApplianceUnderTest, granted: Path, client: Client, tmp_path: Path
) -> None:
    config = bastion_config(appliance, client)
    stranger = keygen(tmp_path / "stranger_ca")
    forged = keygen(client.directory / "forged")
    sign(stranger, forged, principals=client.user)
    assert _tunnel(client, config, granted, client.user)

    for _ in range(int(LIMIT)):
        assert not _tunnel(client, config, forged, client.user)

    assert not _tunnel(client, config, forged, client.user)
    assert _locked(appliance, client)
    assert _tunnel(client, config, granted, client.user)


def _locked(appliance: ApplianceUnderTest, client: Client) -> bool:
    phrase = f"{client.host.address} is locked after repeated failures"
    return phrase in appliance.reasons("auth.refused", phrase)


def test_unknown_logins_lock_the_address(
    appliance: ApplianceUnderTest, granted: Path, client: Client
) -> None:
    config = bastion_config(appliance, client)
    plain = keygen(client.directory / "plain")

    for login in ("root", "admin", "oracle", "games"):
        assert not _tunnel(client, config, plain, login)

    assert _locked(appliance, client)
    assert _tunnel(client, config, granted, client.user)


def test_plain_keys_of_a_known_user_do_not_count(
    appliance: ApplianceUnderTest, granted: Path, client: Client
) -> None:
    config = bastion_config(appliance, client)
    plain = keygen(client.directory / "plain")

    for _ in range(int(LIMIT) + 1):
        assert not _tunnel(client, config, plain, client.user)

    assert _tunnel(client, config, granted, client.user)


def test_web_failures_lock_the_ssh_door(
    appliance: ApplianceUnderTest, granted: Path, client: Client
) -> None:
    config = bastion_config(appliance, client)
    state = appliance.state
    for _ in range(state.config.web.lockout_failures):
        with pytest.raises(AuthFailed):
            identity.authenticate(
                state,
                "nobody",
                Secret("wrong password!"),
                Secret("000000"),
                address=client.host.address,
                via="web",
            )
    plain = keygen(client.directory / "plain")

    assert not _tunnel(client, config, plain, "root")
    assert _locked(appliance, client)
    assert _tunnel(client, config, granted, client.user)
