"""The VM image boots under QEMU and its bastion and web UI answer.

Opt-in (JIT_BASTION_TEST_VM=1): under software emulation (TCG) a boot
takes minutes. JIT_BASTION_VM_ACCEL=kvm uses KVM where it works. The
guest's network is QEMU's user mode with ``restrict=on``: it reaches
nothing; only the forwarded loopback ports reach it.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.images.conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("JIT_BASTION_TEST_VM") != "1",
        reason="VM boot is opt-in: JIT_BASTION_TEST_VM=1 scripts/test-images",
    ),
]

BOOT_TIMEOUT = float(os.environ.get("JIT_BASTION_VM_BOOT_TIMEOUT", "1200"))

USER_DATA = """#cloud-config
write_files:
  - path: /etc/jit-bastion/environment
    permissions: "0600"
    content: |
      BASTION_NAME=localhost
      BASTION_FIRST_ADMIN=alice
runcmd:
  - |
    for i in $(seq 120); do
      [ -s /var/lib/jit-bastion/first-admin-invitation.txt ] && break
      sleep 5
    done
    { echo "== root filesystem"; df -BM --output=size / | tail -n 1
      echo "== invitation"; cat /var/lib/jit-bastion/first-admin-invitation.txt
      echo "== end"; } >/dev/ttyS0
"""


@dataclass
class BootedVM:
    """A running QEMU guest and the host ports forwarded to it."""

    process: subprocess.Popen[bytes]
    console: Path
    ssh_port: int
    web_port: int
    accel: str
    started: float


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedVM]:
    """The built qcow2, booted from a throwaway overlay with a cloud-init seed."""
    images = sorted(REPO.glob("dist/*jit-bastion_*_amd64.qcow2"))
    if not images:
        pytest.fail("no VM image in dist/: run scripts/build-vm first")
    directory = tmp_path_factory.mktemp("vm")
    overlay = directory / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
         "-b", str(images[-1]), str(overlay)],
        check=True,
    )  # fmt: skip
    # Bigger than the image, as after 'qm resize': the root fs must grow.
    subprocess.run(["qemu-img", "resize", "-q", str(overlay), "6G"], check=True)
    seed = _write_seed(directory)
    accel = os.environ.get("JIT_BASTION_VM_ACCEL", "tcg")
    ssh_port, web_port = _free_port(), _free_port()
    console = directory / "console.log"
    with (directory / "qemu.log").open("wb") as qemu_log:
        process = _start_qemu(
            accel, overlay, seed, console, ssh_port, web_port, qemu_log
        )
    yield BootedVM(process, console, ssh_port, web_port, accel, time.monotonic())
    process.terminate()
    process.wait(timeout=30)


def _start_qemu(
    accel: str, overlay: Path, seed: Path, console: Path, ssh_port: int,
    web_port: int, log: IO[bytes],
) -> subprocess.Popen[bytes]:  # fmt: skip
    """QEMU with the overlay, the seed, and two loopback ports forwarded."""
    return subprocess.Popen(
        ["qemu-system-x86_64", "-accel", accel, "-m", "1024", "-smp", "2",
         "-display", "none", "-monitor", "none",
         "-serial", f"file:{console}",
         "-drive", f"file={overlay},if=virtio,format=qcow2",
         "-drive", f"file={seed},media=cdrom,format=raw",
         "-netdev", "user,id=n0,restrict=on,"
         f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22,"
         f"hostfwd=tcp:127.0.0.1:{web_port}-:8443",
         "-device", "virtio-net-pci,netdev=n0"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )  # fmt: skip


@pytest.mark.timeout(BOOT_TIMEOUT + 600)
def test_vm_boots_and_its_services_answer(
    vm: BootedVM, capsys: pytest.CaptureFixture[str]
) -> None:
    banner = _wait_for_banner(vm)
    seconds = time.monotonic() - vm.started
    status = _front_page_status(vm.web_port)

    report = _wait_for_console(vm, "== end")

    with capsys.disabled():
        print(f"\nVM image ({vm.accel}): bastion answered after {seconds:.0f}s")
    assert banner.startswith("SSH-2.0-")
    assert status < 500
    assert "Invitation for alice" in report
    size = report.split("== root filesystem")[1].split()[0]
    assert int(size.rstrip("M")) > 5000, report


def _wait_for_console(vm: BootedVM, needle: str, timeout: float = 300) -> str:
    """The serial console's text once ``needle`` appears on it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = vm.console.read_text(errors="replace")
        if needle in text:
            return text
        time.sleep(2)
    pytest.fail(f"{needle!r} not on the console:\n{text[-4000:]}")


def _write_seed(directory: Path) -> Path:
    """A NoCloud seed ISO (label cidata), as Proxmox's cloud-init drive is."""
    seed = directory / "seed"
    seed.mkdir()
    (seed / "user-data").write_text(USER_DATA)
    (seed / "meta-data").write_text("instance-id: jit-bastion-test\n")
    iso = directory / "seed.iso"
    subprocess.run(
        ["genisoimage", "-quiet", "-output", str(iso), "-volid", "cidata",
         "-joliet", "-rock", str(seed / "user-data"), str(seed / "meta-data")],
        check=True,
    )  # fmt: skip
    return iso


def _wait_for_banner(vm: BootedVM) -> str:
    """Wait until the bastion sends its SSH banner; fail if QEMU exits."""
    deadline = vm.started + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if vm.process.poll() is not None:
            pytest.fail(f"QEMU exited:\n{vm.console.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", vm.ssh_port), 5) as sock:
                sock.settimeout(10)
                banner = sock.recv(256).decode(errors="replace")
            if banner:
                return banner
        except OSError:
            pass
        time.sleep(3)
    tail = vm.console.read_text(errors="replace")[-4000:]
    pytest.fail(f"no SSH banner within {BOOT_TIMEOUT:.0f}s; console:\n{tail}")


def _front_page_status(port: int) -> int:
    """HTTP status of the web UI's front page (self-signed certificate)."""
    deadline = time.monotonic() + 120
    while True:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=10, context=ssl._create_unverified_context()
        )
        try:
            connection.request("GET", "/")
            return connection.getresponse().status
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(3)
        finally:
            connection.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
