"""scripts/target-trust.sh against a real sshd, in a directory of its own.

The script is pointed at a temporary ``SSHD_CONFIG_DIR`` holding a main
``sshd_config`` like Debian's (``Include sshd_config.d/*.conf`` first),
so the machine's own ``/etc/ssh`` is never touched; the sshd that reads
the result runs in a host of its own and is reached straight, without
the bastion, with certificates from the appliance's CA.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.access import revoke
from appliance.inventory import add_static_target
from tests.audit_fixtures import direct_config
from tests.harness import SSHD, ApplianceUnderTest, Client, SSHDTarget, keygen, sign
from tests.netlab import IS_ROOT, Host, Network, wait_for_line

SCRIPT = Path(__file__).parent.parent / "scripts" / "target-trust.sh"
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root and namespaces")


@pytest.fixture
def etc_ssh() -> Iterator[Path]:
    """A stand-in for /etc/ssh with a Debian-like main config.

    It is readable by all, as /etc/ssh is: sshd reads a principals file
    as the user logging in.
    """
    directory = Path(tempfile.mkdtemp(prefix="jit-etc-ssh-"))
    directory.chmod(0o755)
    keygen(directory / "host_key")
    write_main_config(directory, "127.0.0.1")
    yield directory
    shutil.rmtree(directory)


def write_main_config(directory: Path, address: str, include: bool = True) -> None:
    """Write ``sshd_config``: the drop-ins first, as Debian has it."""
    lines = [f"Include {directory}/sshd_config.d/*.conf"] if include else []
    lines += [
        f"ListenAddress {address}",
        f"HostKey {directory / 'host_key'}",
        "PidFile none",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "AuthorizedKeysFile none",
        "StrictModes no",
        "LogLevel VERBOSE",
    ]
    (directory / "sshd_config").write_text("\n".join(lines) + "\n")


def trust(etc: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the script for the config in ``etc``."""
    Path("/run/sshd").mkdir(exist_ok=True)
    env = {**os.environ, "SSHD_CONFIG_DIR": str(etc), "SSHD_BIN": SSHD}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


@pytest.fixture
def ca_line(tmp_path: Path) -> Path:
    """A user CA's public line, as ``ca show-user-key`` prints one."""
    return keygen(tmp_path / "user_ca").with_suffix(".pub")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 for files in ``tmp_path/www``; its URL."""
    root = tmp_path / "www"
    root.mkdir()

    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet."""


def test_the_script_is_strict_and_checks_with_sshd() -> None:
    text = SCRIPT.read_text()

    assert "set -euo pipefail" in text
    assert '"$sshd" -t -f "$main_config"' in text


def test_the_drop_in_names_the_ca_the_krl_and_the_principals(
    etc_ssh: Path, ca_line: Path
) -> None:
    result = trust(etc_ssh, "--ca", str(ca_line), "--allow", "alice")

    assert result.returncode == 0, result.stderr
    home = etc_ssh / "jit-bastion"
    dropin = (etc_ssh / "sshd_config.d" / "jit-bastion.conf").read_text()
    assert f"TrustedUserCAKeys {home}/user_ca.pub\n" in dropin
    assert f"RevokedKeys {home}/revoked.krl\n" in dropin
    assert f"AuthorizedPrincipalsFile {home}/principals/%u\n" in dropin
    assert (home / "user_ca.pub").read_text() == ca_line.read_text()
    assert (home / "principals" / "alice").read_text() == "alice\n"
    assert (home / "revoked.krl").read_bytes().startswith(b"SSHKRL")
    assert "sshd trusts the jit-bastion user CA 256 SHA256:" in result.stdout
    assert "logins that certificates may use: alice" in result.stdout


@needs_root
def test_a_real_sshd_follows_the_ca_principals_and_krl(
    appliance: ApplianceUnderTest,
    network: Network,
    etc_ssh: Path,
    ca_line: Path,
    client: Client,
    alice: str,
    served: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    host = network.host("vmtrust")
    write_main_config(etc_ssh, host.address)
    ca_line.write_text(appliance.cli("ca", "show-user-key").stdout)
    (tmp_path / "www" / "ca.pub").write_text(ca_line.read_text())
    installed = trust(
        etc_ssh, "--ca", f"{served}/ca.pub", "--allow", alice, "--allow", "bob=alice"
    )
    assert installed.returncode == 0, installed.stderr
    vm = _start_sshd(host, etc_ssh, tmp_path / "sshd.log")
    request.addfinalizer(vm.stop)
    add_static_target(appliance.state.engine, "vm01", host.address, 22)
    key = keygen(client.directory / "id")
    serial = appliance.issue(alice, "vm01", key).serial
    bob = Client(client.host, client.directory, "bob")
    bob_key = keygen(client.directory / "bob")
    sign(appliance.state_path / "ca" / "user_ca", bob_key, principals="bob", serial=7)

    as_alice = client.ssh(direct_config(client, vm, key), "vm01", "id -un")
    alice_as_bob = bob.ssh(direct_config(bob, vm, key), "vm01", "id -un")
    bob_as_bob = bob.ssh(direct_config(bob, vm, bob_key), "vm01", "id -un")
    revoke(appliance.state, serial, by="admin", reason="laptop lost")
    appliance.cli("ca", "krl", "--out", str(tmp_path / "www" / "revoked.krl"))
    renewed = trust(
        etc_ssh,
        "--ca",
        str(ca_line),
        "--krl",
        f"{served}/revoked.krl",
        "--allow",
        alice,
    )
    revoked = client.ssh(direct_config(client, vm, key), "vm01", "id -un")

    assert as_alice.stdout.strip() == alice, as_alice.stderr
    assert alice_as_bob.stdout.strip() == "bob", alice_as_bob.stderr
    assert bob_as_bob.returncode == 255
    assert renewed.returncode == 0, renewed.stderr
    assert revoked.returncode == 255
    log = (tmp_path / "sshd.log").read_text()
    assert "revoked" in log


def test_something_that_is_not_a_public_key_changes_nothing(
    etc_ssh: Path, tmp_path: Path
) -> None:
    bogus = tmp_path / "bogus.pub"
    bogus.write_text("<html>Not Found</html>\n")

    result = trust(etc_ssh, "--ca", str(bogus))

    assert result.returncode == 1
    assert "is not an OpenSSH public key" in result.stderr
    assert not (etc_ssh / "sshd_config.d" / "jit-bastion.conf").exists()


def test_a_private_key_is_refused_without_echoing_it(
    etc_ssh: Path, tmp_path: Path
) -> None:
    private = keygen(tmp_path / "oops")

    result = trust(etc_ssh, "--ca", str(private))

    assert result.returncode == 1
    assert "holds a private key" in result.stderr
    assert "BEGIN" not in result.stderr


def test_a_config_sshd_rejects_is_rolled_back(etc_ssh: Path, ca_line: Path) -> None:
    assert trust(etc_ssh, "--ca", str(ca_line), "--allow", "alice").returncode == 0
    dropin = etc_ssh / "sshd_config.d" / "jit-bastion.conf"
    before = dropin.read_text()

    result = trust(etc_ssh, "--ca", str(ca_line), "--principals-command", "relative")

    assert result.returncode == 1
    assert "sshd -t rejected the result, so it was rolled back" in result.stderr
    assert "absolute path" in result.stderr
    assert dropin.read_text() == before


def test_a_main_config_that_skips_the_drop_ins_is_reported(
    etc_ssh: Path, ca_line: Path
) -> None:
    write_main_config(etc_ssh, "127.0.0.1", include=False)

    result = trust(etc_ssh, "--ca", str(ca_line), "--allow", "alice")

    assert result.returncode == 1
    assert f"put 'Include {etc_ssh}/sshd_config.d/*.conf' at the top" in result.stderr
    assert not (etc_ssh / "sshd_config.d" / "jit-bastion.conf").exists()


def test_bad_logins_and_conflicting_options_are_refused(
    etc_ssh: Path, ca_line: Path
) -> None:
    bad_login = trust(etc_ssh, "--ca", str(ca_line), "--allow", "Root*")
    both = trust(
        etc_ssh,
        "--ca",
        str(ca_line),
        "--allow",
        "alice",
        "--principals-command",
        "/bin/true",
    )
    missing_ca = trust(etc_ssh, "--allow", "alice")

    assert "'Root*' is not a login name" in bad_login.stderr
    assert "exclude each other" in both.stderr
    assert missing_ca.returncode == 2 and "Usage:" in missing_ca.stderr


def _start_sshd(host: Host, etc: Path, log: Path) -> SSHDTarget:
    """Start sshd on the script's result; wrap it for direct_config."""
    vm = SSHDTarget("vm01", host, etc, etc / "jit-bastion" / "user_ca.pub")
    vm.process = host.popen([SSHD, "-D", "-e", "-f", str(etc / "sshd_config")], log)
    wait_for_line(vm.process, log, "Server listening")
    return vm
