"""Proxmox guests end to end: a person asks for a VM by its Proxmox name,
the bastion starts it, and OpenSSH's ``ssh -J`` reaches a real sshd.

The Proxmox double runs in this process on ``127.0.0.1``; the bastion
runs in a network namespace of its own, whose loopback is not ours. A
:class:`~tests.guest_fixtures.NamespaceRelay` listens on the same port
on the bastion's loopback and passes the bytes (TLS included) through,
so both sides use one URL and the double stays under the test's hand:
guests, nodes, stalls. Guests are backed by real sshd targets in hosts
on 10.77.0.0/24, which is what ``proxmox.target_networks`` prefers.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import access
from appliance.errors import AmbiguousName
from appliance.identity import add_user
from tests.guest_fixtures import NamespaceRelay, configure_proxmox
from tests.harness import ApplianceUnderTest, Client, SSHDTarget, keygen
from tests.netlab import IS_ROOT, SUBNET, Network
from tests.pvedouble import PVEDouble

pytest_plugins = ["tests.pvedouble.fixtures"]
pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs network namespaces")

#: Guests tagged "startable" may be started by whoever may reach them;
#: any other exposed guest may be reached, not started.
POLICY = [{"tags": ["startable"], "may_start": True}, {"tags": ["jit"]}]
STALL = 4.0


@pytest.fixture
def cluster(appliance: ApplianceUnderTest, pve: PVEDouble) -> Iterator[PVEDouble]:
    """The double, reachable from the bastion, configured as its cluster."""
    relay = NamespaceRelay(appliance.host.netns, pve.port).start()
    configure_proxmox(
        appliance.state_path,
        pve,
        networks=[f"{SUBNET}.0/24"],
        policy=POLICY,
        timeout="10s",
        cache_seconds="1s",
        start_timeout="20s",
    )
    appliance.close()  # the next use opens the state with this config
    yield pve
    relay.close()


@pytest.fixture
def guest_sshd(
    network: Network, appliance: ApplianceUnderTest, tmp_path: Path, person: str
) -> Iterator[Callable[[str, str], SSHDTarget]]:
    """Start a real sshd, named as its target, in a host of its own."""
    started: list[SSHDTarget] = []

    def start(name: str, host_name: str) -> SSHDTarget:
        host = network.host(host_name)
        directory = tmp_path / host_name
        sshd = SSHDTarget(name, host, directory, appliance.user_ca_file())
        started.append(sshd.start())
        return sshd

    yield start
    for sshd in started:
        sshd.stop()


def backed_by(sshd: SSHDTarget) -> str:
    """The ``backing`` of a guest whose sshd is ``sshd``."""
    return f"{sshd.host.address}:{sshd.port}"


def test_a_stopped_vm_asked_for_by_name_is_started_and_reached(
    cluster: PVEDouble,
    appliance: ApplianceUnderTest,
    client: Client,
    alice: str,
    guest_sshd: Callable[[str, str], SSHDTarget],
) -> None:
    sshd = guest_sshd("web01", "vmweb01")
    guest = cluster.cluster.add_guest(
        101,
        "web01",
        "pve1",
        tags=("jit", "startable"),
        backing=backed_by(sshd),
        start_seconds=1.5,
        agent_delay=1.5,
    )
    key = keygen(client.directory / "id")
    issued = appliance.issue(alice, "web01", key)
    appliance.start()
    config = client.config(appliance, key, [sshd])

    began = time.monotonic()
    result = client.ssh(config, "web01", "echo reached $(id -un)")
    waited = time.monotonic() - began

    assert result.returncode == 0, result.stderr + appliance.log.read_text()
    assert result.stdout.strip() == f"reached {alice}"
    assert guest.status == "running"
    assert waited >= 3.0
    assert access.find_grant(appliance.state.engine, issued.serial).may_start
    started = appliance.events("guest.started", wait_for=1)[0]
    assert (started["target"], started["serial"]) == ("web01", issued.serial)
    assert started["detail"]["upid"].startswith("UPID:pve1:")
    assert ":qmstart:101:" in started["detail"]["upid"]
    assert appliance.events("tunnel.opened", wait_for=1)[0]["target"] == "web01"


def test_a_grant_without_may_start_leaves_a_stopped_guest_alone(
    cluster: PVEDouble, appliance: ApplianceUnderTest, client: Client, alice: str
) -> None:
    cluster.cluster.add_guest(201, "db01", "pve1")
    key = keygen(client.directory / "id")
    issued = appliance.issue(alice, "db01", key)
    appliance.start()

    result = client.ssh(client.config(appliance, key), "-W", "db01:22", "bastion")

    phrase = "target 'db01' is stopped and this grant may not start it"
    assert phrase in result.stderr
    assert not access.find_grant(appliance.state.engine, issued.serial).may_start
    assert not cluster.cluster.tasks
    assert phrase in appliance.reasons("tunnel.refused", phrase)


def test_a_start_that_fails_is_refused_and_audited_with_its_task(
    cluster: PVEDouble, appliance: ApplianceUnderTest, client: Client, alice: str
) -> None:
    failure = "start failed: QEMU exited with code 1"
    cluster.cluster.add_guest(
        202, "broken01", "pve1", tags=("jit", "startable"), start_result=failure
    )
    key = keygen(client.directory / "id")
    appliance.issue(alice, "broken01", key)
    appliance.start()

    config = client.config(appliance, key)
    result = client.ssh(config, "-W", "broken01:22", "bastion")

    assert f"starting broken01 (202) failed: {failure}" in result.stderr
    failed = appliance.events("guest.start_failed", wait_for=1)[0]
    assert failed["detail"]["upid"] in cluster.cluster.tasks
    assert failed["outcome"] == "failed"


def test_a_guest_on_an_offline_node_is_refused_as_node_offline(
    cluster: PVEDouble, appliance: ApplianceUnderTest, client: Client, alice: str
) -> None:
    cluster.cluster.add_guest(301, "app01", "pve2", tags=("jit", "startable"))
    key = keygen(client.directory / "id")
    appliance.issue(alice, "app01", key)
    mark = appliance.log.stat().st_size if appliance.log.exists() else 0
    appliance.start()
    _wait_for_log(appliance, "Targets: 0 static, 1 Proxmox guests", mark)
    cluster.cluster.set_online("pve2", False)
    time.sleep(1.1)  # past the bastion's cache of the guest list

    result = client.ssh(client.config(appliance, key), "-W", "app01:22", "bastion")

    assert "node offline: node 'pve2' of target 'app01'" in result.stderr
    assert not cluster.cluster.tasks


def test_two_guests_with_one_name_are_each_reached_as_name_node(
    cluster: PVEDouble,
    appliance: ApplianceUnderTest,
    client: Client,
    alice: str,
    guest_sshd: Callable[[str, str], SSHDTarget],
) -> None:
    first = guest_sshd("app.pve1", "vmapp1")
    second = guest_sshd("app.pve2", "vmapp2")
    cluster.cluster.add_guest(
        401, "app", "pve1", status="running", backing=backed_by(first)
    )
    cluster.cluster.add_guest(
        402, "app", "pve2", status="running", backing=backed_by(second)
    )
    keys = [keygen(client.directory / name) for name in ("id1", "id2")]
    with pytest.raises(AmbiguousName, match=r"use name\.node or the id"):
        appliance.issue(alice, "app", keys[0])
    appliance.issue(alice, "app.pve1", keys[0])
    appliance.issue(alice, "402", keys[1])
    appliance.start()

    reached = [
        client.ssh(
            client.config(appliance, key, [sshd]), sshd.name, "echo $SSH_CONNECTION"
        )
        for key, sshd in zip(keys, (first, second), strict=True)
    ]

    for result, sshd in zip(reached, (first, second), strict=True):
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[2] == sshd.host.address


def test_a_stalled_api_leaves_other_tunnels_flowing(
    cluster: PVEDouble,
    appliance: ApplianceUnderTest,
    client: Client,
    alice: str,
    network: Network,
    guest_sshd: Callable[[str, str], SSHDTarget],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sshd = guest_sshd("web01", "vmweb01")
    cluster.cluster.add_guest(
        101, "web01", "pve1", status="running", backing=backed_by(sshd)
    )
    cluster.cluster.add_guest(201, "db01", "pve1")
    key = keygen(client.directory / "id")
    appliance.issue(alice, "web01", key)
    bob = _bob(appliance, network)
    bob_key = keygen(bob.directory / "id")
    appliance.issue("bob", "db01", bob_key)
    appliance.start()
    probe = _start_probe(client, client.config(appliance, key, [sshd]), 8)
    measuring = time.monotonic()

    time.sleep(2.5)  # the baseline
    stall_began = time.monotonic()
    cluster.stall(STALL)
    threading.Timer(STALL, cluster.stall, args=(0,)).start()
    refused = bob.ssh(bob.config(appliance, bob_key), "-W", "db01:22", "bastion")
    bob_waited = time.monotonic() - stall_began
    samples = _finish_probe(probe)

    assert "target 'db01' is stopped" in refused.stderr
    assert bob_waited >= STALL - 0.5
    before = _window(samples, measuring, stall_began)
    during = _window(samples, stall_began, stall_began + STALL)
    with capsys.disabled():
        print(
            f"\nstall test: bob waited {bob_waited:.1f} s; before {before}; "
            f"during {during}"
        )
    # Had the loop waited for the API, both sessions would have stood
    # still for the whole stall; a busy two-CPU box only slows them.
    assert during["pings"] > 20
    assert during["rtt_max"] < 1.0
    assert during["bulk_gap"] < 1.0
    assert during["mb_per_s"] > 0.3 * before["mb_per_s"]


def _bob(appliance: ApplianceUnderTest, network: Network) -> Client:
    """A second person, with an ssh client in the same client host."""
    add_user(appliance.state.engine, "bob")
    directory = appliance.directory / "bob"
    directory.mkdir()
    return Client(network.host("client"), directory, "bob")


# Runs in the client host: one ssh session echoes a line every 20 ms,
# another reads /dev/zero as fast as it can; every sample is stamped
# with the monotonic clock, which namespaces share.
_PROBE = r"""
import json, subprocess, sys, threading, time

config, seconds = sys.argv[1], float(sys.argv[2])
ssh = ["ssh", "-F", config, "web01"]
pings, chunks = [], []
echo = subprocess.Popen(ssh + ["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
bulk = subprocess.Popen(ssh + ["cat /dev/zero"], stdout=subprocess.PIPE)
echo.stdin.write(b"hello\n"); echo.stdin.flush(); echo.stdout.readline()
bulk.stdout.read(1)
print("measuring", flush=True)
end = time.monotonic() + seconds

def read_bulk():
    while time.monotonic() < end:
        chunks.append((time.monotonic(), len(bulk.stdout.read1(1 << 20))))

reader = threading.Thread(target=read_bulk)
reader.start()
while time.monotonic() < end:
    sent = time.monotonic()
    echo.stdin.write(b"ping\n"); echo.stdin.flush(); echo.stdout.readline()
    pings.append((sent, time.monotonic() - sent))
    time.sleep(0.02)
reader.join()
for process in (echo, bulk):
    process.kill(); process.wait()
print(json.dumps({"pings": pings, "chunks": chunks}))
"""


def _start_probe(client: Client, config: Path, seconds: float) -> subprocess.Popen[str]:
    """Start the probe in the client host; return once it measures."""
    argv = ["timeout", "60", sys.executable, "-c", _PROBE, str(config), str(seconds)]
    probe = subprocess.Popen(
        client.host.command(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert probe.stdout is not None
    line = probe.stdout.readline()
    assert line.strip() == "measuring", line + probe.stderr.read()

    return probe


def _finish_probe(probe: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait for the probe and return its samples."""
    out, err = probe.communicate(timeout=40)
    assert probe.returncode == 0, err
    samples: dict[str, Any] = json.loads(out)
    return samples


def _window(samples: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    """Latency and throughput of the samples stamped within [start, end)."""
    rtts = sorted(rtt for at, rtt in samples["pings"] if start <= at < end)
    chunks = [(at, size) for at, size in samples["chunks"] if start <= at < end]
    span = chunks[-1][0] - chunks[0][0] if len(chunks) > 1 else 1.0
    volume = sum(size for _, size in chunks[1:])
    stamps = [start] + [at for at, _ in chunks] + [end]
    gap = max(later - earlier for earlier, later in itertools.pairwise(stamps))

    return {
        "pings": len(rtts),
        "rtt_p50": round(statistics.median(rtts), 4),
        "rtt_p99": round(rtts[int(len(rtts) * 0.99)], 4),
        "rtt_max": round(rtts[-1], 4),
        "mb_per_s": round(volume / span / 1e6, 1),
        "bulk_gap": round(gap, 3),
    }


def _wait_for_log(appliance: ApplianceUnderTest, needle: str, mark: int) -> None:
    """Wait until the bastion logs ``needle`` after byte ``mark``."""
    deadline = time.monotonic() + 10
    while needle not in appliance.log.read_text()[mark:]:
        assert time.monotonic() < deadline, appliance.log.read_text()[mark:]
        time.sleep(0.05)
