"""The benchmark's machines: a client, two jump hosts and one target.

Three network namespaces (as root) on one bridge, made with the test
harness: ``bastion`` runs both jump hosts under test side by side, the
appliance's bastion and an OpenSSH sshd configured as a plain jump host
(local forwarding only, to the target only, no shell); ``target`` runs a
real sshd that trusts the appliance's user CA and the byte sink/source
of :mod:`tests.bench.stream`; ``client`` runs OpenSSH's ssh. Both hops
trust the same user CA, so one certificate works through either.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from appliance.identity import add_user
from appliance.inventory import add_static_target
from tests.harness import ApplianceUnderTest, SSHDTarget, cert_path, keygen
from tests.netlab import IS_ROOT, Host, Network, wait_for_line

REPO = Path(__file__).resolve().parents[2]
PERSON = "alice"
STREAM_PORT = 9000
JUMP_PORT = 2200

#: An OpenSSH sshd as a jump host: forwards to the target and nothing else.
JUMP_CONFIG = """\
AllowTcpForwarding local
PermitOpen {permit}
AllowAgentForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTunnel no
PermitTTY no
ForceCommand /bin/false
Ciphers {ciphers}
"""


@dataclass(frozen=True)
class Hop:
    """One jump host under test, and how a client names things through it."""

    label: str
    address: str
    port: int
    pid: int
    target_host: str
    target_port: int
    stream_dest: tuple[str, int]
    host_key_alias: str | None = None


@dataclass
class Lab:
    """Everything the benchmark runs against, and how to take it down."""

    directory: Path
    network: Network
    appliance: ApplianceUnderTest
    target: SSHDTarget
    jump: SSHDTarget
    client: Host
    person: str
    keys: dict[str, Path] = field(default_factory=dict)
    hops: list[Hop] = field(default_factory=list)
    stream: subprocess.Popen[bytes] | None = None
    candidate: ApplianceUnderTest | None = None

    @property
    def bastion(self) -> Hop:
        """The appliance's bastion."""
        return self.hops[0]

    @property
    def openssh(self) -> Hop:
        """The OpenSSH sshd jump host."""
        return self.hops[-1]

    def close(self) -> None:
        """Stop every server and delete the namespaces."""
        self.appliance.stop()
        if self.candidate:
            self.candidate.stop()
        self.jump.stop()
        self.target.stop()
        if self.stream and self.stream.poll() is None:
            self.stream.terminate()
            self.stream.wait(timeout=10)
        self.network.close()


#: The hops' nice value. On a small shared machine a one-process server
#: (the bastion) gets one scheduler share against the hundreds of client
#: processes of a crowd, while sshd's per-connection processes get one
#: each; favouring both hops alike is closer to a machine of their own.
HOP_NICE = -10


def favour(pid: int) -> None:
    """Give a hop (and the children it forks later) priority on the CPU."""
    if IS_ROOT:
        os.setpriority(os.PRIO_PROCESS, pid, HOP_NICE)


def ensure_person() -> str:
    """The account people log in as on the targets (as in conftest)."""
    if not IS_ROOT:
        import getpass

        return getpass.getuser()
    if subprocess.run(["id", PERSON], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", PERSON], check=True)
    # sshd without PAM refuses a locked account; '*' is unlocked, no password.
    subprocess.run(["usermod", "-p", "*", PERSON], check=True)

    return PERSON


def build_lab(directory: Path, bastion_from: Path | None = None) -> Lab:
    """Start the appliance, both hops, the target and its stream server.

    ``bastion_from`` runs the appliance from another checkout, to compare
    a change against the code it changes.
    """
    person = ensure_person()
    network = Network()
    # Not "jb": the test suite removes "jb*" namespaces it finds at start.
    network.tag = f"bn{os.getpid() % 100000}"
    try:
        return _start_parts(directory, network, person, bastion_from)
    except BaseException:
        network.close()
        raise


def _start_parts(
    directory: Path, network: Network, person: str, bastion_from: Path | None
) -> Lab:
    appliance = ApplianceUnderTest(network.host("bastion"), directory / "appliance")
    if bastion_from:
        appliance.env["PYTHONPATH"] = str(bastion_from.resolve())
    appliance.directory.mkdir(parents=True)
    appliance.init()
    engine = appliance.state.engine
    add_user(engine, person)
    target = _start_target(network.host("target"), directory, appliance)
    stream_port = target.host.free_port(STREAM_PORT)
    add_static_target(engine, "web01", target.host.address, target.port)
    add_static_target(engine, "stream01", target.host.address, stream_port)
    jump = _start_jump(appliance, target, stream_port, directory)
    client = network.host("client")
    lab = Lab(directory, network, appliance, target, jump, client, person)
    lab.stream = _start_stream(target.host, stream_port, directory)
    appliance.start()
    lab.keys = _issue_keys(lab, person)
    lab.hops = _describe_hops(lab, stream_port)
    for hop in lab.hops:
        favour(hop.pid)

    return lab


def _start_target(
    host: Host, directory: Path, appliance: ApplianceUnderTest
) -> SSHDTarget:
    target = SSHDTarget("web01", host, directory / "web01", appliance.user_ca_file())
    target.port = host.free_port(22)

    return target.start()


def _start_jump(
    appliance: ApplianceUnderTest, target: SSHDTarget, stream_port: int, root: Path
) -> SSHDTarget:
    address = target.host.address
    jump = SSHDTarget("jump", appliance.host, root / "jump", appliance.user_ca_file())
    jump.port = appliance.host.free_port(JUMP_PORT)
    jump.extra_config = JUMP_CONFIG.format(
        permit=f"{address}:{target.port} {address}:{stream_port}",
        ciphers=",".join(appliance.state.config.ssh.ciphers),
    )

    return jump.start()


def _start_stream(host: Host, port: int, root: Path) -> subprocess.Popen[bytes]:
    log = root / "stream.log"
    argv = [
        sys.executable,
        "-m",
        "tests.bench.stream",
        "serve",
        host.address,
        str(port),
    ]
    process = host.popen(argv, log, cwd=REPO)
    wait_for_line(process, log, "stream server listening")

    return process


def _issue_keys(lab: Lab, person: str) -> dict[str, Path]:
    """One key per granted target, each with its certificate beside it."""
    keys = {}
    client_dir = lab.directory / "client"
    client_dir.mkdir(exist_ok=True)
    for target in ("web01", "stream01"):
        key = keygen(client_dir / f"id_{target}")
        lab.appliance.issue(person, target, key, ttl="8h", reason="benchmark run")
        keys[target] = key

    return keys


def _describe_hops(lab: Lab, stream_port: int) -> list[Hop]:
    assert lab.appliance.process is not None and lab.jump.process is not None
    target = lab.target.host.address
    bastion = Hop(
        "jit-bastion",
        lab.appliance.host.address,
        lab.appliance.port,
        lab.appliance.process.pid,
        "web01",
        22,
        ("stream01", 22),
    )
    openssh = Hop(
        "OpenSSH",
        lab.jump.host.address,
        lab.jump.port,
        lab.jump.process.pid,
        target,
        lab.target.port,
        (target, stream_port),
        host_key_alias="jump",
    )

    return [bastion, openssh]


def add_candidate(lab: Lab, checkout: Path) -> Hop:
    """A second bastion on the same state, run from another checkout.

    It listens on the next port and becomes a third hop, so a change is
    measured against the code it changes in the same run, turn by turn.
    """
    directory = lab.directory / "candidate"
    directory.mkdir()
    (directory / "state").symlink_to(lab.appliance.state_path)
    host = lab.appliance.host
    candidate = ApplianceUnderTest(host, directory)
    candidate.port = host.free_port(lab.appliance.port + 1)
    candidate.env["PYTHONPATH"] = str(checkout.resolve())
    candidate.start(ssh_listen=f"{host.address}:{candidate.port}")
    lab.candidate = candidate
    assert candidate.process is not None
    hop = Hop(
        "candidate",
        host.address,
        candidate.port,
        candidate.process.pid,
        "web01",
        22,
        ("stream01", 22),
    )
    lab.hops.insert(1, hop)
    favour(hop.pid)

    return hop


def write_client_config(lab: Lab, hop: Hop, key_for: str, cipher: str | None) -> Path:
    """An ssh_config naming ``hop`` "hop" and the target "web01" behind it.

    ``cipher`` None leaves OpenSSH's default order, in which the client's
    first choice that the server offers wins.
    """
    directory = lab.directory / "client"
    known_hosts = _write_known_hosts(lab)
    key = lab.keys[key_for]
    alias = f"  HostKeyAlias {hop.host_key_alias}\n" if hop.host_key_alias else ""
    ciphers = f"  Ciphers {cipher}\n" if cipher else ""
    path = directory / f"ssh_config-{hop.label}-{key_for}-{cipher or 'default'}"
    path.write_text(
        f"Host hop\n  HostName {hop.address}\n  Port {hop.port}\n{alias}"
        f"Host web01\n  HostName {hop.target_host}\n  Port {hop.target_port}\n"
        "  HostKeyAlias web01\n  ProxyJump hop\n"
        f"Host *\n  User {lab.person}\n"
        f"  IdentityFile {key}\n  CertificateFile {cert_path(key)}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {known_hosts}\n{ciphers}"
        "  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n"
        "  ControlMaster no\n  ControlPath none\n  LogLevel ERROR\n"
    )

    return path


def _write_known_hosts(lab: Lab) -> Path:
    path = lab.directory / "client" / "known_hosts"
    if not path.exists():
        lines = [lab.appliance.cli("ca", "show-host-key").stdout.strip()]
        lines.append(lab.target.known_hosts_line())
        lines.append(lab.jump.known_hosts_line())
        path.write_text("\n".join(lines) + "\n")

    return path
