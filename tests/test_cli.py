"""The admin command: init, users, targets, certificates, check."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from appliance.identity import add_user
from appliance.inventory import add_static_target
from tests.harness import JIT_BASTION, ApplianceUnderTest, keygen


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_keeps_private_keys_private(appliance: ApplianceUnderTest) -> None:
    state = appliance.state_path

    for private in ("ca/user_ca", "ca/host_ca", "ssh/host_key"):
        assert _mode(state / private) == 0o600, private
    assert _mode(state) == 0o700
    assert "0600" not in appliance.log.read_text() if appliance.log.exists() else True


def test_init_refuses_to_overwrite_a_state(appliance: ApplianceUnderTest) -> None:
    result = appliance.cli("init", check=False)

    assert result.returncode == 2
    assert "is initialised already" in result.stderr


def test_commands_on_a_missing_state_say_to_run_init(tmp_path: Path) -> None:
    result = subprocess.run(
        [*JIT_BASTION, "--state", str(tmp_path / "nowhere"), "targets"],
        capture_output=True,
        text=True,
    )

    assert result.returncode == 2
    assert "run 'jit-bastion --state" in result.stderr
    assert "init' first" in result.stderr


def test_check_passes_on_a_fresh_state(appliance: ApplianceUnderTest) -> None:
    result = appliance.cli("check")

    assert result.stdout.strip().endswith(": OK")


def test_check_prints_one_line_per_problem(appliance: ApplianceUnderTest) -> None:
    config = appliance.state_path / "config.toml"
    text = config.read_text().replace('skew = "60s"', 'skew = "soon"')
    config.write_text(text)
    (appliance.state_path / "ca" / "user_ca").chmod(0o644)

    broken_config = appliance.cli("check", check=False)
    config.write_text(text.replace('skew = "soon"', 'skew = "60s"'))
    broken_key = appliance.cli("check", check=False)

    assert broken_config.returncode == 1
    assert "ssh.skew: 'soon' is not a duration" in broken_config.stdout
    assert broken_key.returncode == 1
    assert "user_ca has mode 0644; a private key must be 0600" in broken_key.stdout


def test_issue_and_show_a_certificate(
    appliance: ApplianceUnderTest, tmp_path: Path, person: str
) -> None:
    key = keygen(tmp_path / "id")
    appliance.cli("user", "add", person)
    appliance.cli("target", "add", "web01", "192.0.2.10")

    result = appliance.cli(
        "cert",
        "issue",
        person,
        "--public-key",
        f"{key}.pub",
        "--target",
        "web01",
        "--reason",
        "check the logs",
        "--ttl",
        "10m",
    )

    listing = subprocess.run(
        ["ssh-keygen", "-L", "-f", "-"],
        input=result.stdout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f'Key ID: "{person}/' in listing
    assert "permit-port-forwarding" in listing
    assert "permit-agent-forwarding" not in listing
    assert "no-touch-required" not in listing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ttl", "9h"], "longer than the 8h allowed"),
        (["--ttl", "forever"], "'forever' is not a duration"),
        (["--target", "web99"], "unknown target 'web99'"),
        (["--reason", "no"], "the reason must be 3 to 500 characters long"),
        (["--reason", "two\nlines"], "one line without control characters"),
        (["--public-key", "PRIVATE"], "that is a private key"),
        (["--public-key", "GARBAGE"], "not an OpenSSH public key"),
        (["--public-key", "RSA1024"], "RSA keys must have at least 3072 bits"),
    ],
)
def test_cert_issue_refuses_bad_input_clearly(
    appliance: ApplianceUnderTest,
    tmp_path: Path,
    person: str,
    args: list[str],
    message: str,
) -> None:
    key = keygen(tmp_path / "id")
    (tmp_path / "garbage").write_text("ssh-ed25519 AAAAnotbase64")
    rsa = keygen(tmp_path / "rsa", "rsa", 1024)
    files = {
        "PRIVATE": str(key),
        "GARBAGE": str(tmp_path / "garbage"),
        "RSA1024": f"{rsa}.pub",
    }
    add_user(appliance.state.engine, person)
    add_static_target(appliance.state.engine, "web01", "192.0.2.10", 22)
    defaults = {
        "--public-key": f"{key}.pub",
        "--target": "web01",
        "--reason": "check the logs",
    }
    defaults.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = [item for pair in defaults.items() for item in pair]
    argv = [files.get(item, item) for item in argv]

    result = appliance.cli("cert", "issue", person, *argv, check=False)

    assert result.returncode != 0
    assert message in result.stderr
    assert "BEGIN OPENSSH PRIVATE KEY" not in result.stderr
    denied = appliance.events("certificate.denied")
    assert denied and message in denied[0]["detail"]["error"]


def test_target_add_refuses_bad_names_and_addresses(
    appliance: ApplianceUnderTest,
) -> None:
    bad_name = appliance.cli("target", "add", "<b>web</b>", "10.0.0.1", check=False)
    bad_port = appliance.cli("target", "add", "web01", "10.0.0.1:99999", check=False)

    assert "'<b>web</b>' is not a valid target name" in bad_name.stderr
    assert "is not HOST:PORT" in bad_port.stderr


def test_revoking_twice_or_an_unknown_serial_is_refused(
    appliance: ApplianceUnderTest,
) -> None:
    unknown = appliance.cli("cert", "revoke", "12345", check=False)

    assert unknown.returncode == 2
    assert "no certificate with serial 12345 was issued here" in unknown.stderr


def test_ca_lines_are_ready_to_paste(appliance: ApplianceUnderTest) -> None:
    user = appliance.cli("ca", "show-user-key").stdout.strip()
    host = appliance.cli("ca", "show-host-key").stdout.strip()

    assert user.startswith("ssh-ed25519 ")
    assert host.startswith(f"@cert-authority bastion.test,{appliance.host.address} ")
