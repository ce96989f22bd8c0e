"""The ``jit`` command: its config, its files, and ``jit ssh`` end to end."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pexpect
import pyotp
import pytest

from appliance import client as jit
from appliance.client import ClientConfig, ClientError, Route
from tests.harness import ApplianceUnderTest, Client, SSHDTarget
from tests.web.people import Person, enroll_person
from tests.web.server import WebUnderTest

pytest_plugins = ["tests.web.fixtures"]

JIT = [sys.executable, "-m", "appliance.client"]
ROUTE = Route("bastion.example", 2222, "bastion.example", "alice", "web01", "deploy")


def test_ssh_config_names_key_certificate_and_jump_for_both_hops() -> None:
    text = jit.render_ssh_config(ROUTE, "/k/id", "/k/id-cert.pub", "/k/known hosts")

    bastion, target = text.split("\n\n")
    assert bastion.splitlines()[:5] == [
        "Host jit-bastion",
        "    HostName bastion.example",
        "    Port 2222",
        "    User alice",
        "    HostKeyAlias bastion.example",
    ]
    assert '    UserKnownHostsFile "/k/known hosts"' in bastion
    assert "    Ciphers aes128-gcm@openssh.com," in bastion
    assert target.startswith("Host web01\n    User deploy\n    ProxyJump jit-bastion\n")
    for hop in (bastion, target):
        assert "    IdentityFile /k/id\n" in hop
        assert "    CertificateFile /k/id-cert.pub\n" in hop
        assert "    IdentitiesOnly yes" in hop


def test_config_is_written_and_read_back(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(_any_certificate_pem())
    config = jit.check_config("https://bastion.example:8443/", "alice", str(ca))

    jit.write_config(config, tmp_path / "jit" / "config.toml")

    assert jit.read_config(tmp_path / "jit" / "config.toml") == ClientConfig(
        "https://bastion.example:8443", "alice", str(ca)
    )


@pytest.mark.parametrize(
    ("server", "user", "ca"),
    [
        ("http://bastion.example", "alice", None),
        ("bastion.example", "alice", None),
        ("https://bastion.example", "alice@x", None),
        ("https://bastion.example", "alice", "/nonexistent/ca.pem"),
    ],
)
def test_bad_config_is_refused(server: str, user: str, ca: str | None) -> None:
    with pytest.raises(ClientError):
        jit.check_config(server, user, ca)


def test_missing_config_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="jit config --server URL --user NAME"):
        jit.read_config(tmp_path / "config.toml")


def test_generated_key_is_an_openssh_pair(tmp_path: Path) -> None:
    private, public = jit.generate_key()
    path = tmp_path / "id"
    path.write_text(private.reveal())
    path.chmod(0o600)

    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True
    )

    assert derived.stdout.split()[:2] == public.split()[:2]
    assert public.startswith("ssh-ed25519 ")
    assert "PRIVATE" not in repr(private)


def test_only_expired_grants_are_removed(tmp_path: Path) -> None:
    now = time.time()
    for name, expires in (("old", now - 1), ("live", now + 600)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "id").write_text("key")
        (tmp_path / name / "expires").write_text(f"{expires:.0f}\n")

    removed = jit.remove_expired(tmp_path, now)

    assert removed == [tmp_path / "old"]
    assert (tmp_path / "live" / "id").exists()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[str]:
    """A real ssh-agent on a socket of its own."""
    socket = tmp_path / "agent.sock"
    process = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(socket)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield str(socket)
    process.terminate()
    process.wait(timeout=10)


def test_key_goes_into_the_agent_with_a_lifetime_and_leaves_the_disk(
    tmp_path: Path, agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", agent)
    private, public = jit.generate_key()
    grant = jit.Grant(tmp_path / "g")
    grant.directory.mkdir()
    grant.key.write_text(private.reveal())
    grant.key.chmod(0o600)
    grant.public_key.write_text(public + "\n")

    assert jit.agent_available()
    jit.add_to_agent(grant, 300)

    listed = subprocess.run(["ssh-add", "-L"], capture_output=True, text=True)
    assert public.split()[1] in listed.stdout
    assert not grant.key.exists()


def test_no_agent_means_no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)

    assert not jit.agent_available()


def _any_certificate_pem() -> str:
    from appliance.state import generate_tls_pair

    return generate_tls_pair(["bastion.example"])[1].decode()


# End to end: jit under a pseudo-terminal, through the bastion, to sshd


def _jit_environment(home: Path, agent: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "SSH_"))}
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    if agent:
        env["SSH_AUTH_SOCK"] = agent
    return env


def _jit_config(
    client: Client, env: dict[str, str], web: WebUnderTest, user: str, ca: Path
) -> None:
    argv = [*JIT, "config", "--server", web.url, "--user", user]
    argv += ["--ca-file", str(ca)]
    result = client.host.run(argv, timeout=30, env=env)
    assert result.returncode == 0, result.stderr


def spawn_jit(client: Client, env: dict[str, str], *args: str) -> pexpect.spawn:
    """Run ``jit ARGS`` in the client's host under a pseudo-terminal."""
    argv = client.host.command([*JIT, *args])
    return pexpect.spawn(argv[0], argv[1:], env=env, timeout=60, encoding="utf-8")


def _answer_prompts(child: pexpect.spawn, person: Person) -> None:
    child.expect_exact(f"Password for {person.name}: ")
    child.sendline(person.password)
    child.expect_exact("Code from your authenticator app: ")
    # One step ahead: enrollment spent the current one.
    child.sendline(pyotp.TOTP(person.secret).at(time.time() + 30))


def _start(appliance: ApplianceUnderTest, web: WebUnderTest, person: str) -> Person:
    """Enroll the person, then start gunicorn and the bastion side by side."""
    alice = enroll_person(appliance.state, person, time.time)
    web.start(wait=False)
    appliance.start()
    web.wait()
    return alice


def _jit_ssh_echo(
    client: Client, env: dict[str, str], target: SSHDTarget, alice: Person
) -> Path:
    """``jit ssh web01 ... -- echo``, prompts answered, run to a good end;
    return the one grant directory it left in the cache."""
    known_hosts = client.directory / "targets_known_hosts"
    known_hosts.write_text(target.known_hosts_line() + "\n")
    ssh_args = ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "BatchMode=yes"]
    ssh_args += ["-o", "StrictHostKeyChecking=yes", "echo reached $(id -un)"]
    jit_args = ["ssh", "web01", "-r", "deploy hotfix 7", "--ttl", "5m", "--"]
    child = spawn_jit(client, env, *jit_args, *ssh_args)
    _answer_prompts(child, alice)
    child.expect_exact(f"reached {alice.name}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    [grant] = (Path(env["HOME"]) / ".cache" / "jit").iterdir()
    return grant


def _refused_by_tls(
    client: Client, env: dict[str, str], web: WebUnderTest, tmp_path: Path
) -> None:
    """With a CA file the server's certificate does not chain to, jit stops."""
    other_ca = tmp_path / "other.pem"
    other_ca.write_text(_any_certificate_pem())
    _jit_config(client, env, web, client.user, other_ca)
    child = spawn_jit(client, env, "ssh", "web01", "-r", "should not get here")
    child.expect_exact("Password for")
    child.sendline("irrelevant password")
    child.expect_exact("Code")
    child.sendline("123456")
    child.expect(pexpect.EOF)
    child.close()

    assert child.exitstatus == 1
    assert "CERTIFICATE_VERIFY_FAILED" in (child.before or "")


def test_jit_ssh_checks_tls_then_reaches_sshd_with_0600_key_files(
    appliance: ApplianceUnderTest,
    target: SSHDTarget,
    client: Client,
    person: str,
    web_server: WebUnderTest,
    tmp_path: Path,
) -> None:
    alice = _start(appliance, web_server, person)
    env = _jit_environment(tmp_path / "home", None)
    _refused_by_tls(client, env, web_server, tmp_path)
    _jit_config(client, env, web_server, person, web_server.ca_file)

    grant = _jit_ssh_echo(client, env, target, alice)

    assert (grant / "id").stat().st_mode & 0o777 == 0o600
    assert jit.Grant(grant).key.read_text().startswith("-----BEGIN OPENSSH")
    _stop_reaper(grant)
    issued = appliance.events("certificate.issued")[0]
    assert (issued["reason"], issued["detail"]["via"]) == ("deploy hotfix 7", "api")


def _stop_reaper(grant: Path) -> None:
    """The reaper would sleep out the certificate's five minutes; end it
    and its sleep (one process group, the reaper's own session)."""
    pid = int((grant / "reaper.pid").read_text())
    assert Path(f"/proc/{pid}").exists()
    os.killpg(os.getpgid(pid), signal.SIGTERM)


def test_jit_ssh_reaches_sshd_with_the_key_only_in_ssh_agent(
    appliance: ApplianceUnderTest,
    target: SSHDTarget,
    client: Client,
    person: str,
    web_server: WebUnderTest,
    tmp_path: Path,
    agent: str,
) -> None:
    alice = _start(appliance, web_server, person)
    env = _jit_environment(tmp_path / "home", agent)
    _jit_config(client, env, web_server, person, web_server.ca_file)

    grant = _jit_ssh_echo(client, env, target, alice)

    assert not (grant / "id").exists()
    listed = subprocess.run(
        ["ssh-add", "-L"], env={"SSH_AUTH_SOCK": agent}, capture_output=True, text=True
    )
    assert "-cert-v01@openssh.com" in listed.stdout


def test_reaper_removes_key_files_at_expiry(tmp_path: Path) -> None:
    grant = jit.Grant(tmp_path / "web01-1")
    grant.directory.mkdir()
    grant.key.write_text("key")

    pid = jit.start_reaper(grant, 1)

    assert (grant.directory / "reaper.pid").read_text().strip() == str(pid)
    deadline = time.monotonic() + 10
    while grant.directory.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not grant.directory.exists()


def test_api_error_is_shown_with_its_message_and_code() -> None:
    body = b'{"error": {"code": "refused", "message": "no policy rule lets it"}}'
    error = urllib.error.HTTPError(
        "https://bastion.example/api/v1/certificates",
        403,
        "Forbidden",
        Message(),
        io.BytesIO(body),
    )
    garbled = urllib.error.HTTPError(
        "https://bastion.example/", 502, "Bad Gateway", Message(), io.BytesIO(b"<html>")
    )

    assert jit._error_message(error) == "no policy rule lets it (refused)"
    assert jit._error_message(garbled) == "the appliance answered HTTP 502 Bad Gateway"
