"""The Proxmox adapter against the double: tokens, privileges, TLS, timeouts."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from appliance.config import ProxmoxSection
from appliance.errors import ConfigError, ProxmoxError
from appliance.proxmox import (
    APIUnreachable,
    NodeOffline,
    PrivilegeMissing,
    ProxmoxClient,
    TLSFailure,
    TokenId,
    TokenRejected,
    read_token_secret,
    read_verify,
    run_sync,
)
from appliance.secret import Secret
from tests.pvedouble import TOKEN_ID, TOKEN_SECRET
from tests.pvedouble.server import PVEDouble

pytest_plugins = ["tests.pvedouble.fixtures"]

SCRIPT = Path(__file__).parents[1] / "scripts" / "pve-create-token.sh"


def _client(pve: PVEDouble, token_id: str, secret: str) -> ProxmoxClient:
    return ProxmoxClient(
        pve.url, token_id, Secret(secret), verify=str(pve.tls.ca), timeout=1.0
    )


def test_a_token_id_is_parsed_into_its_parts() -> None:
    token = TokenId.parse("bastion@pve!jit")

    assert (token.user, token.realm, token.name) == ("bastion", "pve", "jit")
    assert (token.userid, str(token)) == ("bastion@pve", "bastion@pve!jit")


@pytest.mark.parametrize(
    ("token_id", "part"),
    [
        ("bastion@pve!jit!" + TOKEN_SECRET, "2 '!'"),
        ("bastion@pve", "0 '!'"),
        ("bastion!jit", "the user before '@'"),
        ("@pve!jit", "the user before '@'"),
        ("bastion@!jit", "the realm"),
        ("bastion@pve!", "the token name"),
        (f"bastion@pve!{TOKEN_SECRET}", "looks like a token secret"),
        ("bastion@pve!9jit", "the token name"),
        (f"bastion@pve!jit={TOKEN_SECRET}", "contains '='"),
    ],
)
def test_a_malformed_token_id_names_the_bad_part_and_not_the_secret(
    pve: PVEDouble, token_id: str, part: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _client(pve, token_id, TOKEN_SECRET)

    assert part in str(caught.value)
    assert "proxmox.token_id" in str(caught.value)
    assert TOKEN_SECRET not in str(caught.value)


def test_a_wrong_secret_is_a_rejected_token(pve: PVEDouble) -> None:
    client = _client(pve, TOKEN_ID, "00000000-0000-0000-0000-000000000000")

    with pytest.raises(TokenRejected) as caught:
        run_sync(client.version())
    client.close()

    assert caught.value.status == 401
    assert "bastion@pve!jit" in str(caught.value)
    assert "invalid token value" in str(caught.value)


def test_a_token_without_power_management_cannot_start_a_guest(
    pve: PVEDouble,
) -> None:
    pve.cluster.add_token("audit@pve!jit", "s", {"/": {"VM.Audit"}})
    pve.cluster.add_guest(101, "web01", "pve1")
    client = _client(pve, "audit@pve!jit", "s")

    with pytest.raises(PrivilegeMissing) as caught:
        run_sync(client.start_guest("pve1", "qemu", 101))
    client.close()

    assert (caught.value.privilege, caught.value.path) == ("VM.PowerMgmt", "/vms/101")
    assert "lacks VM.PowerMgmt on /vms/101" in str(caught.value)
    assert not [e for e in pve.exchanges if e.template.endswith("{upid}/status")]


@pytest.mark.parametrize(
    ("version", "agent_privilege"),
    [("9.1.3", "VM.GuestAgent.Audit"), ("8.4.1", "VM.Monitor")],
)
def test_check_reports_the_privileges_the_token_lacks(
    pve: PVEDouble, version: str, agent_privilege: str
) -> None:
    pve.cluster.version = version
    pve.cluster.add_token("audit@pve!jit", "s", {"/pool/prod": {"VM.Audit"}})
    client = _client(pve, "audit@pve!jit", "s")

    check = run_sync(client.check())
    client.close()

    assert check.version == version
    assert check.missing == ("VM.PowerMgmt", agent_privilege)


def test_a_self_signed_certificate_fails_verification_without_the_ca(
    pve: PVEDouble,
) -> None:
    client = ProxmoxClient(pve.url, TOKEN_ID, Secret(TOKEN_SECRET), timeout=1.0)

    with pytest.raises(TLSFailure) as caught:
        run_sync(client.version())
    client.close()

    assert "certificate" in str(caught.value)
    assert "proxmox.verify_tls" in str(caught.value)
    assert not pve.exchanges


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_turning_verification_off_works_and_warns(
    pve: PVEDouble, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="appliance.proxmox"):
        client = ProxmoxClient(
            pve.url, TOKEN_ID, Secret(TOKEN_SECRET), verify=False, timeout=1.0
        )
    version = run_sync(client.version())
    client.close()

    assert version["version"] == "9.1.3"
    assert "verify_tls is false" in caplog.text


def test_a_refused_connection_says_the_api_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ProxmoxClient(f"https://127.0.0.1:{port}", TOKEN_ID, Secret("s"))

    with pytest.raises(APIUnreachable, match="Connection refused"):
        run_sync(client.version())
    client.close()


def test_an_offline_node_is_reported_as_such(
    pve: PVEDouble, pve_client: ProxmoxClient
) -> None:
    pve.cluster.add_guest(201, "web01", "pve2", status="running")
    pve.cluster.set_online("pve2", False)

    with pytest.raises(NodeOffline) as caught:
        run_sync(pve_client.guest_status("pve2", "qemu", 201))

    assert caught.value.node == "pve2"
    assert str(caught.value).startswith("node offline")


async def _loop_gaps(stop: asyncio.Event) -> float:
    """Tick every 10 ms until ``stop``; return the longest gap seen."""
    longest, last = 0.0, time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.01)
        now = time.monotonic()
        longest, last = max(longest, now - last), now
    return longest


async def _stalled_call(client: ProxmoxClient) -> tuple[BaseException, float, float]:
    """Call a stalled API while a ticker measures the event loop."""
    stop = asyncio.Event()
    ticker = asyncio.create_task(_loop_gaps(stop))
    started = time.monotonic()
    try:
        await client.cluster_guests()
    except ProxmoxError as exc:
        error: BaseException = exc
    elapsed = time.monotonic() - started
    stop.set()

    return error, elapsed, await ticker


def test_a_stalled_api_times_out_without_blocking_the_event_loop(
    pve: PVEDouble, pve_client: ProxmoxClient
) -> None:
    pve.stall(3)

    error, elapsed, longest_gap = asyncio.run(_stalled_call(pve_client))

    assert isinstance(error, NodeOffline)
    assert "within 1 s" in str(error)
    assert 0.9 < elapsed < 2.5
    assert longest_gap < 0.1


def test_the_secret_never_reaches_a_log(
    pve: PVEDouble, caplog: pytest.LogCaptureFixture
) -> None:
    logging.getLogger("proxmoxer").setLevel(logging.DEBUG)
    with caplog.at_level(logging.DEBUG):
        client = _client(pve, TOKEN_ID, TOKEN_SECRET)
        run_sync(client.check())
        with pytest.raises(TokenRejected) as caught:
            run_sync(_client(pve, TOKEN_ID, TOKEN_SECRET[::-1]).version())
        client.close()

    assert logging.getLogger("proxmoxer.core").level == logging.WARNING
    assert "GET version answered" in caplog.text
    for text in (caplog.text, repr(client), str(caught.value)):
        assert TOKEN_SECRET not in text
        assert TOKEN_SECRET[::-1] not in text


def _section(**values: object) -> ProxmoxSection:
    return ProxmoxSection(**values)  # type: ignore[arg-type]


def test_the_secret_comes_inline_or_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text(TOKEN_SECRET + "\n")
    secret_file.chmod(0o600)

    from_file = read_token_secret(_section(token_secret_file=str(secret_file)))
    inline = read_token_secret(_section(token_secret=Secret("inline")))

    assert from_file.reveal() == TOKEN_SECRET
    assert inline.reveal() == "inline"


def test_secret_settings_that_cannot_work_are_config_errors(tmp_path: Path) -> None:
    both = _section(token_secret=Secret("x"), token_secret_file="/etc/hostname")
    missing = _section(token_secret_file=str(tmp_path / "absent"))
    (tmp_path / "empty").write_text("\n")
    empty = _section(token_secret_file=str(tmp_path / "empty"))

    for section, words in ((both, "both"), (missing, "cannot read"), (empty, "empty")):
        with pytest.raises(ConfigError, match=words):
            read_token_secret(section)
    with pytest.raises(ConfigError, match=r"proxmox\.token_secret_file is empty"):
        read_token_secret(_section())


def test_a_readable_secret_file_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text("s")
    secret_file.chmod(0o644)

    read_token_secret(_section(token_secret_file=str(secret_file)))

    assert "chmod 600" in caplog.text


def test_verify_tls_is_true_false_or_a_ca_file(pve: PVEDouble) -> None:
    assert read_verify("true") is True
    assert read_verify(False) is False
    assert read_verify(str(pve.tls.ca)) == str(pve.tls.ca)
    with pytest.raises(ConfigError, match="neither true, false nor a CA file"):
        read_verify("/nonexistent/ca.pem")


def test_a_client_is_built_from_the_config_section(
    pve: PVEDouble, tmp_path: Path
) -> None:
    section = _section(
        url=pve.url,
        token_id=TOKEN_ID,
        token_secret=Secret(TOKEN_SECRET),
        verify_tls=str(pve.tls.ca),
        timeout=2,
    )

    client = ProxmoxClient.from_config(section)
    version = run_sync(client.version())
    client.close()

    assert version["release"] == "9.1"
    with pytest.raises(ConfigError, match=r"proxmox\.url"):
        ProxmoxClient.from_config(_section(url="http://pve1:8006"))


def _run_script(tmp_path: Path, version: str) -> list[str]:
    """Run pve-create-token.sh with pveum and pveversion faked; return pveum calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "pveversion").write_text(
        f"#!/bin/sh\necho 'pve-manager/{version}/0123abcd (running kernel: 6.8)'\n"
    )
    (bin_dir / "pveum").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n'
        'case "$*" in *"list"*) echo "[]";; *"token add"*) echo "{}";; esac\n'
    )
    for fake in bin_dir.iterdir():
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(
        ["bash", str(SCRIPT), "prod"], env=env, check=True, capture_output=True
    )

    return calls.read_text().splitlines()


@pytest.mark.parametrize(
    ("version", "agent_privilege"),
    [("9.1.3", "VM.GuestAgent.Audit"), ("8.4.14", "VM.Monitor")],
)
def test_the_token_script_grants_exactly_the_needed_privileges(
    tmp_path: Path, version: str, agent_privilege: str
) -> None:
    calls = _run_script(tmp_path, version)

    privileges = f"VM.Audit,VM.PowerMgmt,{agent_privilege}"
    assert f"role add JitBastion --privs {privileges}" in calls
    assert any(c.startswith("user add bastion@pve") for c in calls)
    assert "user token add bastion@pve jit --privsep 1" in calls
    assert "acl modify /pool/prod --roles JitBastion --users bastion@pve" in calls
    assert "acl modify /pool/prod --roles JitBastion --tokens bastion@pve!jit" in calls
