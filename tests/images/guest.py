"""The LXC template, unpacked and run the way its systemd units say.

There is no systemd here: :class:`ImageAppliance` reads each unit's
``ExecStart``, ``User``, ``EnvironmentFile``, ``StateDirectory``,
``AmbientCapabilities`` and ``ConditionPathExists`` and starts the
command inside the unpacked rootfs, chrooted, with its own mount and pid
namespaces, in a test host's network namespace. The commands and files
under test are the image's own.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.netlab import Host

STATE = "/var/lib/jit-bastion"
UNIT_DIR = "etc/systemd/system"
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs as init of a new pid namespace: mounts what a service expects,
# then runs the command as a child, so the command gets SIGTERM the way
# systemd sends it (an init ignores signals it has no handler for).
_ENTER = """
set -e
root=$1; shift
mount --make-rprivate /
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
chroot "$root" "$@" &
wait $!
"""


def unpack_template(template: Path, root: Path) -> Path:
    """Unpack a ``.tar.zst`` template into ``root`` as Proxmox does."""
    root.mkdir(parents=True)
    subprocess.run(
        ["tar", "--zstd", "-xpf", str(template), "-C", str(root), "--numeric-owner"],
        check=True,
    )
    return root


def read_unit(path: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, values in the order given."""
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        values.setdefault(key.strip(), []).append(value.strip())
    return values


def read_environment_file(path: Path) -> dict[str, str]:
    """Read a systemd ``EnvironmentFile``: ``KEY=value`` lines, quotes allowed."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            words = shlex.split(value)
            env[key.strip()] = " ".join(words)
    return env


@dataclass
class Service:
    """A started unit: the process tree inside its pid namespace."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the service, as systemd does; SIGKILL what is left."""
        if self.process.poll() is None:
            for pid in _descendants(self.process.pid)[1:]:
                _signal(pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class ImageAppliance:
    """The unpacked template in a test host, its units run one by one."""

    root: Path
    host: Host
    logs: Path
    services: dict[str, Service] = field(default_factory=dict)
    first_boot: subprocess.CompletedProcess[str] | None = None

    @property
    def port(self) -> int:
        """The bastion's port, as first boot set it."""
        config = (self.root / STATE.lstrip("/") / "config.toml").read_text()
        listen = next(
            line for line in config.splitlines() if line.startswith("listen =")
        )
        return int(listen.split(":")[-1].strip().strip('"'))

    def unit(self, name: str) -> dict[str, list[str]]:
        """The parsed unit file ``name`` from the image."""
        return read_unit(self.root / UNIT_DIR / name)

    def command(self, unit: str, argv: list[str]) -> list[str]:
        """``argv`` as the unit would run it: user, env, capabilities."""
        values = self.unit(unit)
        env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"}
        for entry in values.get("EnvironmentFile", []):
            path = self.root / entry.lstrip("-").lstrip("/")
            if path.exists():
                env.update(read_environment_file(path))
            elif not entry.startswith("-"):
                raise FileNotFoundError(f"{unit}: EnvironmentFile {entry} missing")
        user = values.get("User", ["root"])[-1]
        if user != "root":
            env["HOME"] = STATE
        inner = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items())]
        return [
            "unshare", "--mount", "--pid", "--fork", "--kill-child", "--",
            "/bin/sh", "-c", _ENTER, "sh", str(self.root),
            *self._setpriv(values, user), *inner, *argv,
        ]  # fmt: skip

    def _setpriv(self, values: dict[str, list[str]], user: str) -> list[str]:
        """A setpriv prefix for the unit's User=, caps and NoNewPrivileges=."""
        if user == "root":
            return []
        uid, gid = self._ids(user)
        argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        caps = [
            "+" + cap.lower().removeprefix("cap_")
            for entry in values.get("AmbientCapabilities", [])
            for cap in entry.split()
        ]
        if caps:
            argv += [f"--inh-caps={','.join(caps)}", f"--ambient-caps={','.join(caps)}"]
        if values.get("NoNewPrivileges", ["no"])[-1] == "yes":
            argv.append("--no-new-privs")
        return argv

    def _ids(self, user: str) -> tuple[int, int]:
        """The numeric ids of ``user`` from the image's /etc/passwd."""
        for line in (self.root / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
        raise KeyError(f"no user {user!r} in the image")

    def prepare(self, unit: str) -> bool:
        """Make the unit's state and logs directories; False if a condition fails."""
        values = self.unit(unit)
        for condition in values.get("ConditionPathExists", []):
            negate = condition.startswith("!")
            exists = (self.root / condition.lstrip("!").lstrip("/")).exists()
            if exists == negate:
                return False
        user = values.get("User", ["root"])[-1]
        uid, gid = self._ids(user)
        for key, base in (("StateDirectory", "var/lib"), ("LogsDirectory", "var/log")):
            for name in values.get(key, []):
                path = self.root / base / name
                path.mkdir(exist_ok=True)
                path.chmod(int(values.get(key + "Mode", ["0755"])[-1], 8))
                os.chown(path, uid, gid)
        return True

    def exec_start(self, unit: str) -> list[str]:
        """The unit's ExecStart command line, split."""
        return shlex.split(self.unit(unit)["ExecStart"][-1])

    def run_oneshot(self, unit: str) -> subprocess.CompletedProcess[str] | None:
        """Run a Type=oneshot unit to its end; None when a condition skips it."""
        if not self.prepare(unit):
            return None
        result = self.host.run(self.command(unit, self.exec_start(unit)), timeout=120)
        if result.returncode != 0:
            raise AssertionError(f"{unit} failed:\n{result.stdout}{result.stderr}")
        return result

    def start(self, unit: str) -> Service:
        """Start a long-running unit in the background, its output logged."""
        assert self.prepare(unit), f"{unit}: a condition is not met"
        log = self.logs / f"{unit}.log"
        process = self.host.popen(self.command(unit, self.exec_start(unit)), log)
        service = Service(unit, process, log)
        self.services[unit] = service
        return service

    def stop_all(self) -> None:
        """Stop every unit started here."""
        for service in self.services.values():
            service.stop()
        self.services.clear()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``jit-bastion --state /var/lib/jit-bastion ARGS`` as its user."""
        argv = ["/opt/jit-bastion/bin/jit-bastion", "--state", STATE, *args]
        result = self.host.run(self.command("jit-bastion-ssh.service", argv))
        if check and result.returncode != 0:
            raise AssertionError(f"jit-bastion {args} failed:\n{result.stderr}")
        return result


def wait_for_port(
    client: Host, address: str, port: int, service: Service, timeout: float = 30
) -> None:
    """Wait until ``client`` connects to ``address:port``; fail if it died."""
    probe = (
        "import socket, sys\n"
        f"socket.create_connection(({address!r}, {port}), timeout=1).close()\n"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited:\n{service.log.read_text()}")
        if client.run(["python3", "-c", probe], timeout=5).returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(
        f"{service.name} did not listen on {address}:{port}:\n"
        + service.log.read_text()
    )


def _descendants(pid: int) -> list[int]:
    """``pid`` and its descendants, parents first."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += _descendants(int(child))
    return found


def _signal(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid`` unless it is gone already."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
