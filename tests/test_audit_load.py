"""Nothing lost under load: 200 tunnels at once through the real bastion,
then ``kill -9`` of the bastion with tunnels open and closing.

A client only ever sees a login or a tunnel that is already recorded
(the bastion waits for the commit before it answers), so after the kill
every acknowledged step is in the database and the chain verifies. The
close of a tunnel is recorded as it happens: those the kill cut short
have none.
"""

from __future__ import annotations

import selectors
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import audit
from tests.audit_fixtures import bastion_config, start_web01, wait_until
from tests.harness import ApplianceUnderTest, Client, SSHDTarget, cert_path, keygen
from tests.netlab import Network

TUNNELS = 200
#: Each certificate carries a tenth of the tunnels, so counts per serial
#: tell whether any event went missing.
CERTIFICATES = 20


@pytest.fixture
def busy_target(
    network: Network, appliance: ApplianceUnderTest, tmp_path: Path, person: str
) -> Iterator[SSHDTarget]:
    """A real sshd called web01 that lets hundreds of clients wait at once."""
    extra = "MaxStartups 1000:30:1000\nLoginGraceTime 60\n"
    sshd = start_web01(network, appliance, tmp_path / "web01", extra_config=extra)
    yield sshd
    sshd.stop()


def _tunnel(
    client: Client, config: Path, key: Path, cert: Path
) -> subprocess.Popen[bytes]:
    """Start ``ssh -W web01:22 bastion``, its stdin held open until closed."""
    argv = ["timeout", "-k", "2", "90", "ssh", "-F", str(config), "-i", str(key)]
    argv += ["-o", f"CertificateFile={cert}", "-W", "web01:22", "bastion"]
    return subprocess.Popen(
        client.host.command(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _close(processes: list[subprocess.Popen[bytes]]) -> None:
    """Send EOF down each tunnel: the target hangs up, the tunnel closes."""
    for process in processes:
        assert process.stdin is not None
        process.stdin.close()


def _finish(processes: list[subprocess.Popen[bytes]]) -> list[bytes]:
    """Wait for every client; return what each printed."""
    outputs = []
    for process in processes:
        if process.stdin is not None:
            process.stdin.close()  # those left open at the kill
            process.stdin = None
        out, _ = process.communicate(timeout=120)
        outputs.append(out)
    return outputs


def _read_banners(processes: list[subprocess.Popen[bytes]], timeout: float) -> int:
    """Read the target's SSH banner from each held tunnel; return how many."""
    selector = selectors.DefaultSelector()
    for process in processes:
        assert process.stdout is not None
        selector.register(process.stdout, selectors.EVENT_READ)
    seen = 0
    while seen < len(processes):
        ready = selector.select(timeout)
        if not ready:
            break
        for entry, _ in ready:
            selector.unregister(entry.fileobj)
            line = entry.fileobj.readline()  # type: ignore[union-attr]
            seen += line.startswith(b"SSH-2.0-OpenSSH")
    selector.close()
    return seen


def _count(appliance: ApplianceUnderTest, kind: str) -> Counter[int]:
    """How many events of ``kind`` each serial has."""
    events = audit.read_events(appliance.state.engine, kind=kind, limit=10 * TUNNELS)
    return Counter(int(e["serial"]) for e in events)


def test_no_event_is_lost_under_load_or_kill(
    appliance: ApplianceUnderTest,
    busy_target: SSHDTarget,
    client: Client,
    alice: str,
) -> None:
    key = keygen(client.directory / "id")
    certs, serials = [], []
    for i in range(CERTIFICATES):
        serials.append(appliance.issue(alice, "web01", key).serial)
        certs.append(cert_path(key).rename(client.directory / f"cert{i}.pub"))
    appliance.start(audit_head_interval="1")
    config = bastion_config(appliance, client)

    # 200 tunnels open at once, then half of them close at once.
    tunnels = [
        _tunnel(client, config, key, certs[i % CERTIFICATES]) for i in range(TUNNELS)
    ]
    assert _read_banners(tunnels, timeout=60) == TUNNELS
    _close(tunnels[: TUNNELS // 2])
    _finish(tunnels[: TUNNELS // 2])
    assert all(t.returncode == 0 for t in tunnels[: TUNNELS // 2])

    per_serial = TUNNELS // CERTIFICATES
    every, half = Counter(serials * per_serial), Counter(serials * (per_serial // 2))
    assert _count(appliance, "auth.accepted") == every
    assert _count(appliance, "tunnel.opened") == every
    wait_until(lambda: _count(appliance, "tunnel.closed") == half, timeout=30)
    wait_until(lambda: _count(appliance, "connection.closed") == half)

    # kill -9 while 50 tunnels are closing and 50 are open.
    _close(tunnels[TUNNELS // 2 : TUNNELS * 3 // 4])
    assert appliance.process is not None
    appliance.process.kill()
    appliance.process.wait()
    _finish(tunnels[TUNNELS // 2 :])

    assert _count(appliance, "auth.accepted") == every
    assert _count(appliance, "tunnel.opened") == every
    assert half <= _count(appliance, "tunnel.closed") <= every
    log = appliance.log.read_text().splitlines()
    logged = [line for line in log if "audit head seq=" in line]
    verified = appliance.cli("audit", "verify", "--head", logged[-1]).stdout
    assert verified.startswith("audit chain verified")

    # The chain goes on after a restart.
    appliance.start()
    again = _tunnel(client, config, key, certs[0])
    _close([again])
    assert _finish([again])[0].startswith(b"SSH-2.0-OpenSSH")
    before = half[serials[0]]
    wait_until(lambda: _count(appliance, "tunnel.closed")[serials[0]] > before)
    assert audit.verify_chain(appliance.state.engine)[1] is None
