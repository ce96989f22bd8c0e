"""The LXC template: its layout, its first boot, ssh -J through it, restarts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness import Client, SSHDTarget, cert_path, keygen
from tests.images.guest import STATE, ImageAppliance, Service, wait_for_port

pytestmark = pytest.mark.slow

UNITS = [
    "jit-bastion-firstboot.service",
    "jit-bastion-firewall.service",
    "jit-bastion-ssh.service",
    "jit-bastion-web.service",
]


def test_template_is_laid_out_like_proxmox_templates(template: Path) -> None:
    listing = subprocess.run(
        ["tar", "--zstd", "-tf", str(template)],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip

    assert template.name.startswith("debian-12-jit-bastion_")
    assert template.name.endswith("_amd64.tar.zst")
    assert all(name == "./" or name.startswith("./") for name in listing)
    assert {"./etc/os-release", "./etc/debian_version", "./usr/sbin/init"} <= {
        name.rstrip("/") for name in listing
    }


def test_template_holds_no_keys_state_or_machine_id(image: ImageAppliance) -> None:
    root = image.root

    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert not (root / STATE.lstrip("/")).exists()
    assert (root / "etc/machine-id").read_text() == ""
    assert not any((root / "dev").iterdir())
    assert 'VERSION_ID="12"' in (root / "etc/os-release").read_text()


def test_units_pass_systemd_analyze_verify(image: ImageAppliance) -> None:
    paths = [f"/etc/systemd/system/{unit}" for unit in UNITS]
    result = image.host.run(
        image.command(
            "jit-bastion-firewall.service", ["systemd-analyze", "verify", *paths]
        )
    )

    assert result.returncode == 0, result.stderr
    assert "jit-bastion" not in result.stderr, result.stderr


def test_units_are_enabled(image: ImageAppliance) -> None:
    wants = image.root / "etc/systemd/system/multi-user.target.wants"

    assert {p.name for p in wants.iterdir()} >= set(UNITS)


def test_first_boot_writes_the_admin_invitation(booted: ImageAppliance) -> None:
    state = booted.root / STATE.lstrip("/")
    invitation = (state / "first-admin-invitation.txt").read_text().strip()

    assert booted.first_boot is not None
    assert invitation
    assert invitation in booted.first_boot.stdout
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "config.toml").exists()
    assert booted.cli("check").returncode == 0
    assert "admin" in booted.cli("user", "list").stdout


def test_ssh_jump_through_the_image_reaches_target(
    booted: ImageAppliance, bastion: Service, image_target: SSHDTarget,
    image_client: Client, person: str,
) -> None:  # fmt: skip
    config = _client_config(booted, image_client, image_target, person)

    result = image_client.ssh(config, "web01", "echo reached $(id -un)")

    assert result.returncode == 0, result.stderr + bastion.log.read_text()
    assert result.stdout.strip() == f"reached {person}"
    assert f"from {booted.host.address}" in image_target.log.read_text()


def test_restart_keeps_state(
    booted: ImageAppliance, bastion: Service, image_target: SSHDTarget,
    image_client: Client, person: str,
) -> None:  # fmt: skip
    config = _client_config(booted, image_client, image_target, person)
    host_ca = booted.cli("ca", "show-host-key").stdout
    invitation = booted.root / STATE.lstrip("/") / "first-admin-invitation.txt"
    before = invitation.read_text()

    bastion.stop()
    assert booted.run_oneshot("jit-bastion-firstboot.service") is None
    restarted = _start_bastion(booted, image_client)
    result = image_client.ssh(config, "web01", "echo again")

    assert result.returncode == 0, result.stderr + restarted.log.read_text()
    assert result.stdout.strip() == "again"
    assert booted.cli("ca", "show-host-key").stdout == host_ca
    assert invitation.read_text() == before


def test_web_ui_answers_over_https(
    booted: ImageAppliance, image_client: Client
) -> None:
    web = booted.start("jit-bastion-web.service")
    wait_for_port(image_client.host, booted.host.address, 8443, web, timeout=60)
    probe = (
        "import http.client, ssl\n"
        f"c = http.client.HTTPSConnection({booted.host.address!r}, 8443,"
        " context=ssl._create_unverified_context(), timeout=10)\n"
        "c.request('GET', '/')\n"
        "print(c.getresponse().status)\n"
    )

    result = image_client.host.run(["python3", "-c", probe])
    web.stop()

    assert result.returncode == 0, result.stderr + web.log.read_text()
    assert int(result.stdout) < 500


@pytest.fixture(scope="module")
def bastion(booted: ImageAppliance, image_client: Client) -> Service:
    """The image's jit-bastion-ssh.service, listening."""
    return _start_bastion(booted, image_client)


def _start_bastion(image: ImageAppliance, client: Client) -> Service:
    service = image.start("jit-bastion-ssh.service")
    wait_for_port(client.host, image.host.address, image.port, service)
    return service


def _client_config(
    image: ImageAppliance, client: Client, target: SSHDTarget, person: str
) -> Path:
    """A key with a certificate issued by the image, and an ssh_config."""
    key = client.directory / "id"
    if not key.exists():
        keygen(key)
        image.cli("user", "add", person)
        inside = image.root / "tmp" / "id.pub"
        inside.write_text(key.with_suffix(".pub").read_text())
        image.cli(
            "cert", "issue", person, "--public-key", "/tmp/id.pub",
            "--target", "web01", "--reason", "image test", "--out", "/tmp/id-cert.pub",
        )  # fmt: skip
        cert_path(key).write_text((image.root / "tmp" / "id-cert.pub").read_text())
    return client.config(image, key, [target])  # type: ignore[arg-type]


def test_firewall_unit_loads_the_generated_ruleset(booted: ImageAppliance) -> None:
    booted.run_oneshot("jit-bastion-firewall.service")
    listing = booted.host.run(
        booted.command("jit-bastion-firewall.service", ["nft", "list", "ruleset"])
    )

    assert listing.returncode == 0, listing.stderr
    assert "table" in listing.stdout
