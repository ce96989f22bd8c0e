"""The bastion through real OpenSSH: ssh -J to real sshd targets."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from appliance import access
from appliance.inventory import add_static_target
from tests.harness import (
    ApplianceUnderTest,
    Client,
    SSHDTarget,
    cert_path,
    keygen,
    register_grant,
    sign,
)
from tests.netlab import IS_ROOT, Network

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs network namespaces")


def connect(
    appliance: ApplianceUnderTest, client: Client, target: SSHDTarget, key: Path
) -> subprocess.CompletedProcess[str]:
    """Start the bastion and run ``ssh web01 true`` through it."""
    if appliance.process is None:
        appliance.start()
    config = client.config(appliance, key, [target])
    return client.ssh(config, "web01", "true")


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


def test_ssh_jump_works_with_a_postgresql_store(
    database_url: str | None,
    appliance: ApplianceUnderTest,
    target: SSHDTarget,
    client: Client,
    alice: str,
) -> None:
    key = keygen(client.directory / "id")
    appliance.issue(alice, "web01", key)

    result = connect(appliance, client, target, key)

    assert result.returncode == 0, result.stderr
    assert appliance.events("auth.accepted", wait_for=1)


# Each case: how to sign, the login to use, and a phrase of the reason
# the bastion must log and audit.
REFUSED = {
    "expired": ({"validity": "-20m:-10m"}, None, "expired at"),
    "not yet valid beyond skew": ({"validity": "+5m:+15m"}, None, "not valid before"),
    "wrong principal": ({"principals": "bob"}, None, "not among the principals"),
    "no principals, as root": ({"principals": None}, "root", "names no principals"),
    "lifetime forever": ({"validity": "always:forever"}, None, "lives forever"),
    "lifetime over the maximum": ({"validity": "-1m:+9h"}, None, "longer than"),
    "no port forwarding": (
        {"options": ["clear", "permit-pty"]},
        None,
        "does not permit port forwarding",
    ),
    "unknown critical option": (
        {"options": ["verify-required"]},
        None,
        "unsupported critical option 'verify-required'",
    ),
    "source address elsewhere": (
        {"options": ["source-address=192.0.2.1/32"]},
        None,
        "not in the certificate's source-address",
    ),
    "login with a star": ({}, "ali*ce", "login name 'ali*ce' is not allowed"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_certificates_say_why(
    case: str,
    appliance: ApplianceUnderTest,
    target: SSHDTarget,
    client: Client,
    alice: str,
) -> None:
    signing, login, phrase = REFUSED[case]
    key = keygen(client.directory / "id")
    ca = appliance.state_path / "ca" / "user_ca"
    signing = {"principals": alice, **signing}
    case_id = f"{alice}/case"
    sign(ca, key, serial=4242, key_id=case_id, **signing)  # type: ignore[arg-type]
    register_grant(appliance, 4242, alice, "web01")
    appliance.start()
    config = client.config(appliance, key, [target], bastion_user=login)

    result = client.ssh(config, "web01", "true")

    assert result.returncode != 0
    assert "Permission denied" in result.stderr
    reasons = appliance.reasons("auth.refused", phrase)
    assert any(phrase in reason for reason in reasons), reasons
    assert phrase in appliance.log.read_text()
    assert not appliance.events("tunnel.opened")


def test_certificate_from_another_ca_is_refused(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> None:
    other_ca = keygen(client.directory / "other_ca")
    key = keygen(client.directory / "id")
    sign(other_ca, key, principals=alice, serial=7)
    register_grant(appliance, 7, alice, "web01")

    result = connect(appliance, client, target, key)

    assert result.returncode != 0
    phrase = "signed by a CA other than this appliance's user CA"
    assert phrase in appliance.reasons("auth.refused", phrase)


def test_host_certificate_is_refused(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> None:
    key = keygen(client.directory / "id")
    ca = appliance.state_path / "ca" / "user_ca"
    sign(ca, key, principals=alice, serial=8, host=True)
    register_grant(appliance, 8, alice, "web01")

    result = connect(appliance, client, target, key)

    # OpenSSH's client will not offer a host certificate for user auth
    # ("not a user certificate"), so the bastion only ever sees the key.
    assert result.returncode != 0
    reasons = appliance.reasons("auth.refused", "plain public key")
    assert any("plain public key" in reason for reason in reasons)


def test_host_certificate_offered_by_a_raw_client_says_why(
    appliance: ApplianceUnderTest, network: Network, client: Client, alice: str
) -> None:
    key = keygen(client.directory / "id")
    ca = appliance.state_path / "ca" / "user_ca"
    sign(ca, key, principals=alice, serial=9, host=True)
    register_grant(appliance, 9, alice, "web01")
    appliance.start()

    # asyncssh's client offers whatever certificate it is given.
    result = client.host.run(
        [
            sys.executable,
            "-c",
            _OFFER_CERTIFICATE,
            appliance.host.address,
            str(appliance.port),
            alice,
            str(key),
            str(cert_path(key)),
        ]
    )

    assert "refused" in result.stdout, result.stderr
    phrase = "a host certificate was offered as a user certificate"
    assert phrase in appliance.reasons("auth.refused", phrase)


_OFFER_CERTIFICATE = """
import asyncio, sys
import asyncssh

async def main(host, port, user, key, cert):
    keys = [(asyncssh.read_private_key(key), asyncssh.read_certificate(cert))]
    try:
        async with asyncssh.connect(host, int(port), username=user,
                                    client_keys=keys, known_hosts=None):
            print("accepted")
    except asyncssh.PermissionDenied:
        print("refused")

asyncio.run(main(*sys.argv[1:]))
"""


def test_plain_key_is_refused(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> None:
    key = keygen(client.directory / "id")

    result = connect(appliance, client, target, key)

    assert result.returncode != 0
    reasons = appliance.reasons("auth.refused", "plain public key")
    assert any("plain public key" in reason for reason in reasons)


def test_revoked_certificate_is_refused(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> None:
    key = keygen(client.directory / "id")
    issued = appliance.issue(alice, "web01", key)
    appliance.cli("cert", "revoke", str(issued.serial), "--reason", "left the team")

    result = connect(appliance, client, target, key)

    assert result.returncode != 0
    phrase = f"certificate serial {issued.serial} is revoked"
    assert phrase in appliance.reasons("auth.refused", phrase)


def test_certificate_a_little_in_the_future_is_accepted(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> None:
    key = keygen(client.directory / "id")
    ca = appliance.state_path / "ca" / "user_ca"
    sign(ca, key, principals=alice, validity="+30s:+10m", serial=99)
    register_grant(appliance, 99, alice, "web01")

    result = client.ssh(
        _start_and_config(appliance, client, target, key), "-W", "web01:22", "bastion"
    )

    # The bastion lets it in; sshd on the target, which has no skew
    # allowance, is not asked: -W stops at the bastion's tunnel.
    assert result.stdout.startswith("SSH-2.0-OpenSSH"), result.stderr
    assert appliance.events("auth.accepted", wait_for=1)


def _start_and_config(
    appliance: ApplianceUnderTest, client: Client, target: SSHDTarget, key: Path
) -> Path:
    appliance.start()
    return client.config(appliance, key, [target])


@pytest.fixture
def granted(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> Path:
    """A started bastion and an ssh_config holding a certificate for web01."""
    key = keygen(client.directory / "id")
    appliance.issue(alice, "web01", key)
    return _start_and_config(appliance, client, target, key)


def test_shell_on_the_bastion_is_refused(
    granted: Path, appliance: ApplianceUnderTest, client: Client
) -> None:
    result = client.ssh(granted, "bastion")

    assert result.returncode != 0
    assert "only forwards" in result.stderr


def test_remote_forwarding_is_refused(
    granted: Path, appliance: ApplianceUnderTest, client: Client
) -> None:
    result = client.ssh(
        granted,
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "2022:localhost:22",
        "bastion",
    )

    assert result.returncode != 0
    assert "remote port forwarding failed" in result.stderr
    refused = appliance.events("tunnel.refused", wait_for=1)
    assert refused[0]["reason"] == "remote forwarding is not supported"


@pytest.mark.parametrize(
    ("destination", "phrase"),
    [
        ("127.0.0.1:22", "unknown target '127.0.0.1'"),
        ("localhost:22", "unknown target 'localhost'"),
        ("BASTION:2222", "unknown target"),
        ("TARGET_ADDRESS:22", "unknown target"),
        ("web02:22", "target 'web02' is not granted"),
        ("web01:25", "port 25 is not allowed on 'web01'"),
    ],
)
def test_forwarding_goes_only_to_the_granted_target(
    destination: str,
    phrase: str,
    granted: Path,
    appliance: ApplianceUnderTest,
    target: SSHDTarget,
    client: Client,
) -> None:
    add_static_target(appliance.state.engine, "web02", target.host.address, 22)
    destination = destination.replace("BASTION", appliance.host.address)
    destination = destination.replace("TARGET_ADDRESS", target.host.address)

    result = client.ssh(granted, "-W", destination, "bastion")

    assert result.returncode != 0
    assert phrase in result.stderr
    assert "SSH-2.0" not in result.stdout


@needs_root
def test_a_target_that_is_down_fails_with_clear_text(
    granted: Path, appliance: ApplianceUnderTest, client: Client, network: Network
) -> None:
    down = network.host("down01")
    _retarget(appliance, "web01", down.address)

    started = time.monotonic()
    result = client.ssh(granted, "-W", "web01:22", "bastion")

    assert "target 'web01' refused the connection on port 22" in result.stderr
    assert time.monotonic() - started < 10


@needs_root
def test_a_target_that_does_not_answer_fails_within_the_timeout(
    appliance: ApplianceUnderTest,
    target: SSHDTarget,
    client: Client,
    alice: str,
    network: Network,
) -> None:
    silent = network.host("silent01")
    silent.run(["nft", "-f", "-"], input=_DROP_EVERYTHING)
    _retarget(appliance, "web01", silent.address)
    key = keygen(client.directory / "id")
    appliance.issue(alice, "web01", key)
    appliance.start(ssh_connect_timeout="2s")
    config = client.config(appliance, key, [target])

    started = time.monotonic()
    result = client.ssh(config, "-W", "web01:22", "bastion")

    assert "target 'web01' did not answer within 2s" in result.stderr
    assert time.monotonic() - started < 8


_DROP_EVERYTHING = """
table inet silent {
    chain input { type filter hook input priority 0; policy drop; }
}
"""


def _retarget(appliance: ApplianceUnderTest, name: str, host: str) -> None:
    """Point a static target somewhere else, as an operator would."""
    import sqlalchemy as sa

    from appliance.store import targets

    with appliance.state.engine.begin() as connection:
        connection.execute(
            sa.update(targets).where(targets.c.name == name).values(host=host, port=22)
        )


def test_twenty_parallel_tunnels_lose_no_banner(granted: Path, client: Client) -> None:
    def banner(_: int) -> str:
        return client.ssh(granted, "-W", "web01:22", "bastion").stdout

    with ThreadPoolExecutor(20) as pool:
        banners = list(pool.map(banner, range(20)))

    lost = [b for b in banners if not b.startswith("SSH-2.0-OpenSSH")]
    assert not lost, lost


@needs_root
def test_a_target_that_writes_and_closes_at_once(
    appliance: ApplianceUnderTest,
    target: SSHDTarget,
    client: Client,
    alice: str,
    network: Network,
    tmp_path: Path,
) -> None:
    writer = network.host("writer01")
    server = writer.popen(
        ["python3", "-c", _WRITE_AND_CLOSE, writer.address], tmp_path / "writer.log"
    )
    try:
        _retarget(appliance, "web01", writer.address)
        key = keygen(client.directory / "id")
        appliance.issue(alice, "web01", key)
        config = _start_and_config(appliance, client, target, key)

        results = [
            client.ssh(config, "-W", "web01:22", "bastion", timeout=15)
            for _ in range(3)
        ]
    finally:
        server.kill()
        server.wait()

    for result in results:
        assert result.stdout == "hello from the target\n", result.stderr
        assert result.returncode == 0


_WRITE_AND_CLOSE = """
import socket, sys
server = socket.create_server((sys.argv[1], 22))
while True:
    conn, _ = server.accept()
    conn.sendall(b"hello from the target\\n")
    conn.close()
"""


def test_hundred_megabytes_each_way_arrive_intact(
    granted: Path, client: Client, shared_dir: Path
) -> None:
    payload = shared_dir / "payload"
    with payload.open("wb") as file:
        for _ in range(100):
            file.write(os.urandom(1 << 20))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()

    upload = client.host.run(
        ["sh", "-c", f"ssh -F {granted} web01 sha256sum < {payload}"], timeout=120
    )
    download = client.host.run(
        ["sh", "-c", f"ssh -F {granted} web01 cat {payload} | sha256sum"],
        timeout=120,
    )

    assert upload.stdout.split()[0] == digest, upload.stderr
    assert download.stdout.split()[0] == digest, download.stderr


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the person's account on the target can read."""
    directory = Path(tempfile.mkdtemp(prefix="jit-test-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


def test_expiry_closes_a_busy_tunnel(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> None:
    key = keygen(client.directory / "id")
    appliance.start()
    issued = appliance.issue(alice, "web01", key, ttl="12s")
    config = client.config(appliance, key, [target])

    session = client.stream(config)
    session.wait(timeout=40)
    ended = time.time()

    assert ended - issued.valid_before.timestamp() < 2
    assert ended >= issued.valid_before.timestamp() - 0.5
    closed = appliance.events("tunnel.closed", wait_for=1)[0]
    assert closed["reason"] == "certificate expired"
    assert closed["detail"]["bytes_from_target"] > 0


def test_revocation_closes_live_tunnels_within_two_seconds(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> None:
    key = keygen(client.directory / "id")
    issued = appliance.issue(alice, "web01", key)
    config = _start_and_config(appliance, client, target, key)
    session = client.stream(config)
    appliance.events("tunnel.opened", wait_for=1)

    revoked_at = time.monotonic()
    access.revoke(appliance.state, issued.serial, by="test")
    session.wait(timeout=20)

    assert time.monotonic() - revoked_at < 2
    closed = appliance.events("tunnel.closed", wait_for=1)[0]
    assert closed["reason"] == "certificate revoked"


def test_certificate_file_left_behind_is_useless_after_expiry(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> None:
    key = keygen(client.directory / "id")
    appliance.issue(alice, "web01", key, ttl="1s")
    time.sleep(1.5)

    result = connect(appliance, client, target, key)

    assert result.returncode != 0
    assert cert_path(key).exists()


def test_kept_sessions_outlive_expiry_but_open_no_new_tunnel(
    appliance: ApplianceUnderTest, target: SSHDTarget, client: Client, alice: str
) -> None:
    key = keygen(client.directory / "id")
    appliance.start(ssh_close_on_expiry="false")
    issued = appliance.issue(alice, "web01", key, ttl="10s")
    config = client.config(appliance, key, [target])
    control = client.directory / "control"
    master = subprocess.Popen(
        client.host.command(
            [
                "timeout",
                "60",
                "ssh",
                "-F",
                str(config),
                "-M",
                "-S",
                str(control),
                "-N",
                "bastion",
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    session = client.stream(config)
    appliance.events("tunnel.opened", wait_for=1)
    time.sleep(max(0.0, issued.valid_before.timestamp() - time.time()) + 2)

    late = client.ssh(config, "-S", str(control), "-W", "web01:22", "bastion")

    assert session.poll() is None, "the running session was cut"
    assert master.poll() is None
    # Through a control master, ssh shows no reason; the audit trail has it.
    assert late.returncode != 0
    phrase = "the certificate expired: ask for a new one"
    assert phrase in appliance.reasons("tunnel.refused", phrase)
    for process in (session, master):
        process.terminate()
        process.wait(timeout=10)
