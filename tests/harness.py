"""Real parts for tests: OpenSSH sshd targets, the bastion, an ssh client.

Nothing here is a double: targets are Debian's ``sshd``, the bastion is
``jit-bastion serve ssh`` in a process of its own, and the client is
OpenSSH's ``ssh`` with a written ``ssh_config``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from appliance import access, audit, store
from appliance.access import Issued
from appliance.state import State
from tests.netlab import Host, wait_for_line

ROOT = Path(__file__).resolve().parents[1]
JIT_BASTION = [sys.executable, "-m", "appliance.cli"]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def keygen(path: Path, kind: str = "ed25519", bits: int | None = None) -> Path:
    """Make an unencrypted key pair at ``path``; return the private key path."""
    argv = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)]
    if bits:
        argv += ["-b", str(bits)]
    subprocess.run(argv, check=True)
    return path


@dataclass
class SSHDTarget:
    """A real OpenSSH sshd that trusts the appliance's user CA."""

    name: str
    host: Host
    directory: Path
    trusted_ca: Path
    port: int = 22
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.directory / "sshd.log"

    def start(self) -> SSHDTarget:
        """Write the config and host key, start sshd, wait until it listens."""
        self.directory.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(exist_ok=True)
        host_key = self.directory / "host_key"
        if not host_key.exists():
            keygen(host_key)
        config = self.directory / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress {self.host.address}\n"
            f"HostKey {host_key}\nTrustedUserCAKeys {self.trusted_ca}\n"
            "PidFile none\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nAuthorizedKeysFile none\n"
            "StrictModes no\nLogLevel VERBOSE\nMaxStartups 200\n" + self.extra_config
        )
        self.process = self.host.popen([SSHD, "-D", "-e", "-f", str(config)], self.log)
        wait_for_line(self.process, self.log, "Server listening")
        return self

    def known_hosts_line(self) -> str:
        """The ``known_hosts`` line with which a client trusts this target."""
        key = (self.directory / "host_key.pub").read_text().split()[:2]
        return f"{self.name} {' '.join(key)}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@dataclass
class ApplianceUnderTest:
    """A state directory and the bastion serving it, in its own host."""

    host: Host
    directory: Path
    database_url: str | None = None
    port: int = 2222
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    env: dict[str, str] = field(default_factory=dict)
    _state: State | None = field(default=None, repr=False)

    @property
    def state_path(self) -> Path:
        return self.directory / "state"

    @property
    def log(self) -> Path:
        return self.directory / "bastion.log"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``jit-bastion --state DIR ARGS`` and return what it printed."""
        result = subprocess.run(
            [*JIT_BASTION, "--state", str(self.state_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **self.env},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"jit-bastion {args} failed:\n{result.stderr}")
        return result

    def init(self) -> ApplianceUnderTest:
        """Run ``init`` for this host's address."""
        self.port = self.host.free_port(2222)
        args = ["init", "--name", "bastion.test"]
        args += ["--ssh-listen", f"{self.host.address}:{self.port}"]
        if self.database_url:
            args += ["--database-url", self.database_url]
        self.cli(*args)
        return self

    def start(self, **settings: str) -> ApplianceUnderTest:
        """Start ``serve ssh``; ``settings`` become JIT_BASTION_* variables."""
        self.stop()
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        env.update({f"JIT_BASTION_{k.upper()}": v for k, v in settings.items()})
        argv = [*JIT_BASTION, "--state", str(self.state_path), "serve", "ssh"]
        mark = self.log.stat().st_size if self.log.exists() else 0
        self.process = self.host.popen(argv, self.log, env=env)
        _wait_for_line_after(self.process, self.log, "Bastion listening", mark)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def state(self) -> State:
        """The opened state directory, shared by the test's own calls."""
        if self._state is None:
            self._state = State.open(self.state_path)
        return self._state

    def close(self) -> None:
        """Stop the bastion and let go of the database."""
        self.stop()
        if self._state is not None:
            self._state.engine.dispose()
            self._state = None

    def user_ca_file(self) -> Path:
        return self.state_path / "ca" / "user_ca.pub"

    def issue(
        self,
        user: str,
        target: str,
        key: Path,
        ttl: str | None = None,
        reason: str = "routine maintenance",
    ) -> Issued:
        """Issue a certificate for ``key`` and write it beside the key."""
        issued = access.issue_certificate(
            self.state,
            user=user,
            target=target,
            reason=reason,
            public_key=key.with_suffix(".pub").read_text(),
            ttl=ttl,
        )
        cert_path(key).write_text(issued.certificate + "\n")
        return issued

    def reasons(self, kind: str, phrase: str) -> list[str]:
        """Wait until an event of ``kind`` has a reason holding ``phrase``;
        return every reason of that kind (the writes land asynchronously)."""
        deadline = time.monotonic() + 5
        while True:
            reasons = [str(e.get("reason")) for e in self.events(kind)]
            if any(phrase in r for r in reasons) or time.monotonic() > deadline:
                return reasons
            time.sleep(0.1)

    def events(
        self, kind: str | None = None, wait_for: int = 0
    ) -> list[dict[str, Any]]:
        """Return audit events, newest first, waiting a little for stragglers."""
        deadline = time.monotonic() + 5
        while True:
            events = audit.read_events(self.state.engine, kind=kind, limit=500)
            if len(events) >= wait_for or time.monotonic() > deadline:
                return events
            time.sleep(0.1)


def register_grant(
    appliance: ApplianceUnderTest,
    serial: int,
    user: str,
    target: str,
    ports: Sequence[int] = (22,),
) -> None:
    """Record a grant for a certificate a test signed with ssh-keygen itself,
    as if the appliance had issued it."""
    now = datetime.now(UTC)
    request_id = f"t{serial:x}"[:12]
    with appliance.state.engine.begin() as connection:
        connection.execute(
            sa.insert(store.access_requests).values(
                id=request_id,
                user_name=user,
                target=target,
                reason="test",
                ttl=600,
                source="test",
                logins=json.dumps([user]),
                ports=json.dumps(list(ports)),
                may_start=False,
                created_at=now,
            )
        )
        connection.execute(
            sa.insert(store.certificates).values(
                serial=serial,
                request_id=request_id,
                user_name=user,
                key_id=f"{user}/{request_id}",
                principals=json.dumps([user]),
                fingerprint="test",
                valid_after=now,
                valid_before=now,
                certificate="signed by the test",
            )
        )


def sign(
    ca: Path,
    key: Path,
    *,
    principals: str | None,
    validity: str = "-1m:+10m",
    serial: int = 1,
    options: Sequence[str] = (),
    key_id: str = "test",
    host: bool = False,
    algorithm: str | None = None,
) -> Path:
    """Sign ``key`` with ``ca`` using ssh-keygen; return the certificate path."""
    argv = ["ssh-keygen", "-q", "-s", str(ca), "-I", key_id, "-V", validity]
    argv += ["-z", str(serial)]
    if principals is not None:
        argv += ["-n", principals]
    for option in options:
        argv += ["-O", option]
    if host:
        argv.append("-h")
    if algorithm:
        argv += ["-t", algorithm]
    subprocess.run([*argv, str(key.with_suffix(".pub"))], check=True)
    return cert_path(key)


def cert_path(key: Path) -> Path:
    """Where OpenSSH looks for the certificate of private key ``key``."""
    return key.with_name(key.name + "-cert.pub")


def _wait_for_line_after(
    process: subprocess.Popen[bytes], log: Path, needle: str, mark: int
) -> None:
    """Like wait_for_line, for text written after byte ``mark`` of ``log``."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with log.open("rb") as file:
            file.seek(mark)
            if needle.encode() in file.read():
                return
        if process.poll() is not None:
            raise RuntimeError(f"bastion exited:\n{log.read_text()[mark:]}")
        time.sleep(0.05)
    raise TimeoutError(f"bastion did not start:\n{log.read_text()[mark:]}")


@dataclass
class Client:
    """OpenSSH's ssh client in its own host, with a written ssh_config."""

    host: Host
    directory: Path
    user: str

    def config(
        self,
        appliance: ApplianceUnderTest,
        key: Path,
        targets: Sequence[SSHDTarget] = (),
        bastion_user: str | None = None,
    ) -> Path:
        """Write an ssh_config for ``key`` through the bastion; return its path."""
        known_hosts = self.directory / "known_hosts"
        lines = [appliance.cli("ca", "show-host-key").stdout.strip()]
        lines += [target.known_hosts_line() for target in targets]
        known_hosts.write_text("\n".join(lines) + "\n")
        names = " ".join(t.name for t in targets) or "none"
        path = self.directory / f"ssh_config-{key.name}"
        path.write_text(
            f"Host bastion\n  HostName {appliance.host.address}\n"
            f"  Port {appliance.port}\n  User {bastion_user or self.user}\n"
            f"Host {names}\n  ProxyJump bastion\n  User {self.user}\n"
            f"Host *\n  IdentityFile {key}\n  CertificateFile {cert_path(key)}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {known_hosts}\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n"
            # INFO shows the bastion's reason when a channel is refused.
            "  LogLevel INFO\n"
        )
        return path

    def stream(self, config: Path) -> subprocess.Popen[bytes]:
        """Keep a session to web01 busy printing ticks, for up to a minute."""
        remote = "while :; do echo tick; sleep 0.1; done"
        argv = ["timeout", "60", "ssh", "-F", str(config), "web01", remote]
        return subprocess.Popen(
            self.host.command(argv),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def ssh(
        self, config: Path, *args: str, timeout: float = 30, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ssh -F config ARGS`` in the client host."""
        return self.host.run(["ssh", "-F", str(config), *args], timeout, input=input)
