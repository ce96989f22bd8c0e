"""Fixtures of the image stage: the built LXC template, booted unit by unit.

These tests are slow and need root and a template built by
``scripts/build-lxc``; ``scripts/test-images`` runs both. A plain
``pytest`` run skips them with a reason that says so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Client, SSHDTarget
from tests.images.guest import ImageAppliance, unpack_template
from tests.netlab import Network

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Skip the image stage unless ``-m slow`` asked for it."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="image stage: run scripts/test-images")
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def template() -> Path:
    """The LXC template that scripts/build-lxc wrote to dist/."""
    if os.geteuid() != 0:
        pytest.skip("the image tests need root (chroot, network namespaces)")
    chosen = os.environ.get("JIT_BASTION_TEMPLATE")
    found = (
        [Path(chosen)] if chosen else sorted(REPO.glob("dist/*jit-bastion_*.tar.zst"))
    )
    if not found or not found[-1].exists():
        pytest.fail("no LXC template in dist/: run scripts/build-lxc first")
    return found[-1]


@pytest.fixture(scope="module")
def image(
    template: Path, network: Network, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ImageAppliance]:
    """The template unpacked in a host of its own; nothing started yet."""
    directory = tmp_path_factory.mktemp("image")
    root = unpack_template(template, directory / "rootfs")
    host = network.host("imgbastion")
    # The operator's override file, as cloud-init or an admin would write it.
    (root / "etc/jit-bastion/environment").write_text(f"BASTION_NAME={host.address}\n")
    appliance = ImageAppliance(root, host, directory)
    yield appliance
    appliance.stop_all()


@pytest.fixture(scope="module")
def booted(image: ImageAppliance) -> Iterator[ImageAppliance]:
    """The image after its first boot: state made, bastion and web started."""
    image.first_boot = image.run_oneshot("jit-bastion-firstboot.service")
    yield image


@pytest.fixture(scope="module")
def image_target(
    booted: ImageAppliance, network: Network, person: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SSHDTarget]:  # fmt: skip
    """A real sshd called web01 trusting the image's user CA."""
    directory = tmp_path_factory.mktemp("web01")
    user_ca = directory / "user_ca.pub"
    user_ca.write_text(booted.cli("ca", "show-user-key").stdout)
    sshd = SSHDTarget("web01", network.host("imgweb01"), directory, user_ca)
    sshd.start()
    booted.cli("target", "add", "web01", f"{sshd.host.address}:{sshd.port}")
    yield sshd
    sshd.stop()


@pytest.fixture(scope="module")
def image_client(
    network: Network, person: str, tmp_path_factory: pytest.TempPathFactory
) -> Client:
    """OpenSSH's ssh in a host of its own."""
    return Client(network.host("imgclient"), tmp_path_factory.mktemp("client"), person)
