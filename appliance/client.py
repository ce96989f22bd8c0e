"""``jit``: ask for a certificate and connect, in one step.

``jit config`` records the appliance's URL, the user name and, for a
self-signed appliance, the CA file that its TLS certificate must verify
against. ``jit ssh TARGET -r REASON`` then asks for the password and a
code (without echo), makes a fresh Ed25519 key, has the appliance sign it
through the JSON API, and runs OpenSSH with a generated ``ssh_config``
(options given with ``-i`` or ``-o`` would reach only the target, never
the ``-J`` hop). The private key goes into ssh-agent with the
certificate's lifetime when an agent answers; otherwise it is kept in a
0600 file under ``~/.cache/jit`` that a later run removes once expired.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .secret import Secret

#: The Host name the bastion gets in generated ssh_config files.
BASTION_ALIAS = "jit-bastion"
API_TIMEOUT = 30


class ClientError(Exception):
    """A problem the person can fix; the message says how."""


@dataclass(frozen=True)
class Route:
    """How a laptop reaches a target: through which bastion, as whom."""

    bastion_host: str
    bastion_port: int
    host_key_alias: str
    user: str
    target: str
    login: str


def _quoted(path: str) -> str:
    """A path as ssh_config reads it: in double quotes when it has spaces."""
    return f'"{path}"' if " " in path else path


BASTION_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
)


def render_ssh_config(
    route: Route,
    identity_file: str,
    certificate_file: str,
    known_hosts_file: str | None = None,
) -> str:
    """An ssh_config for ``ssh -F FILE TARGET``: the bastion, then the target.

    ``HostKeyAlias`` makes OpenSSH check the bastion's host certificate
    against the appliance's name on any port, as the ``@cert-authority``
    line names it.
    """
    keys = [
        f"    IdentityFile {_quoted(identity_file)}",
        f"    CertificateFile {_quoted(certificate_file)}",
        "    IdentitiesOnly yes",
    ]
    bastion = [
        f"Host {BASTION_ALIAS}",
        f"    HostName {route.bastion_host}",
        f"    Port {route.bastion_port}",
        f"    User {route.user}",
        f"    HostKeyAlias {route.host_key_alias}",
        # The client's order decides the cipher, and OpenSSH's puts
        # chacha20-poly1305 first; AES-GCM costs the bastion ~28% less CPU.
        f"    Ciphers {','.join(BASTION_CIPHERS)}",
    ]
    if known_hosts_file:
        bastion.append(f"    UserKnownHostsFile {_quoted(known_hosts_file)}")
    target = [
        f"Host {route.target}",
        f"    User {route.login}",
        f"    ProxyJump {BASTION_ALIAS}",
    ]

    return "\n".join([*bastion, *keys, "", *target, *keys]) + "\n"


# Where things live


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/jit``, by default ``~/.config/jit``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")

    return Path(base) / "jit"


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jit``, by default ``~/.cache/jit``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")

    return Path(base) / "jit"


@dataclass(frozen=True)
class ClientConfig:
    """What ``jit config`` wrote."""

    server: str
    user: str
    ca_file: str = ""


def write_config(config: ClientConfig, path: Path) -> None:
    """Write ``config.toml``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = [f"{key} = {json.dumps(value)}" for key, value in vars(config).items()]
    path.write_text("# Written by 'jit config'.\n" + "\n".join(lines) + "\n")


def read_config(path: Path) -> ClientConfig:
    """Read ``config.toml``; say how to make one when it is missing."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ClientError(
            f"{path} is missing: run 'jit config --server URL --user NAME'"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ClientError(f"{path} is not valid TOML: {exc}") from None
    try:
        return ClientConfig(
            str(raw["server"]), str(raw["user"]), raw.get("ca_file", "")
        )
    except KeyError as exc:
        raise ClientError(f"{path} has no {exc.args[0]}: run 'jit config'") from None


def check_config(server: str, user: str, ca_file: str | None) -> ClientConfig:
    """Check what ``jit config`` was given; HTTPS only."""
    parts = urlsplit(server)
    if parts.scheme != "https" or not parts.hostname:
        raise ClientError(f"{server!r} is not an https:// URL")
    if not user or any(c.isspace() or c in "@:/" for c in user):
        raise ClientError(f"{user!r} is not a user name")
    ca = ""
    if ca_file:
        ca_path = Path(ca_file).expanduser().absolute()
        try:
            ssl.create_default_context(cafile=str(ca_path))
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(f"{ca_file} is not a readable PEM file: {exc}") from None
        ca = str(ca_path)

    return ClientConfig(server.rstrip("/"), user, ca)


# The API


def call_api(config: ClientConfig, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST JSON to the appliance, verifying its TLS certificate."""
    context = ssl.create_default_context(cafile=config.ca_file or None)
    request = urllib.request.Request(  # noqa: S310 (https:// checked in config)
        config.server + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(  # noqa: S310 (https:// checked in config)
            request, context=context, timeout=API_TIMEOUT
        ) as response:
            answer: dict[str, Any] = json.load(response)
            return answer
    except urllib.error.HTTPError as exc:
        raise ClientError(_error_message(exc)) from None
    except urllib.error.URLError as exc:
        raise ClientError(f"cannot reach {config.server}: {exc.reason}") from None


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The appliance's message for a failed call, or the HTTP status."""
    try:
        error = json.load(exc)["error"]
        return f"{error['message']} ({error['code']})"
    except (ValueError, KeyError, TypeError):
        return f"the appliance answered HTTP {exc.code} {exc.reason}"


# Keys and files


@dataclass(frozen=True)
class Grant:
    """The files of one certificate under the cache directory."""

    directory: Path

    @property
    def key(self) -> Path:
        """The private key file (absent once it is in ssh-agent)."""
        return self.directory / "id"

    @property
    def public_key(self) -> Path:
        """The public key file."""
        return self.directory / "id.pub"

    @property
    def certificate(self) -> Path:
        """The certificate, beside the key as OpenSSH expects."""
        return self.directory / "id-cert.pub"

    @property
    def ssh_config(self) -> Path:
        """The generated ssh_config for ``ssh -F``."""
        return self.directory / "ssh_config"

    @property
    def expires(self) -> Path:
        """The Unix time after which the grant is removed."""
        return self.directory / "expires"


def generate_key() -> tuple[Secret, str]:
    """A fresh Ed25519 key: the private key (OpenSSH PEM) and public line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )

    return Secret(private.decode()), public.decode() + " jit"


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def remove_expired(cache: Path, now: float | None = None) -> list[Path]:
    """Delete the cached keys and certificates that have run out."""
    now = time.time() if now is None else now
    removed = []
    for expires in cache.glob("*/expires"):
        try:
            stale = float(expires.read_text()) <= now
        except (OSError, ValueError):
            stale = True
        if stale:
            shutil.rmtree(expires.parent, ignore_errors=True)
            removed.append(expires.parent)

    return removed


def agent_available() -> bool:
    """Whether an ssh-agent answers on $SSH_AUTH_SOCK."""
    if not os.environ.get("SSH_AUTH_SOCK"):
        return False
    result = subprocess.run(["ssh-add", "-l"], capture_output=True, timeout=10)

    return result.returncode in (0, 1)


def add_to_agent(grant: Grant, lifetime: int) -> None:
    """Load key and certificate into ssh-agent for ``lifetime`` seconds,
    then delete the private key file."""
    try:
        result = subprocess.run(
            ["ssh-add", "-q", "-t", str(max(lifetime, 1)), str(grant.key)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    finally:
        grant.key.unlink(missing_ok=True)
    if result.returncode != 0:
        raise ClientError(f"ssh-add failed: {result.stderr.strip()}")


def save_grant(
    answer: dict[str, Any], private_key: Secret, public_key: str, cache: Path
) -> Grant:
    """Write the key pair, the certificate and its expiry for an answer."""
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    grant = Grant(cache / f"{answer['target']}-{answer['serial']}")
    grant.directory.mkdir(mode=0o700, exist_ok=True)
    _write_private(grant.key, private_key.reveal())
    grant.public_key.write_text(public_key + "\n")
    grant.certificate.write_text(answer["certificate"].strip() + "\n")
    valid_before = datetime.fromisoformat(answer["valid_before"])
    grant.expires.write_text(f"{valid_before.timestamp():.0f}\n")

    return grant


def write_ssh_config(answer: dict[str, Any], grant: Grant, identity: Path) -> None:
    """Write the grant's ssh_config and the appliance's known_hosts line."""
    known_hosts = write_known_hosts(answer["known_hosts"])
    bastion = answer["bastion"]
    route = Route(
        bastion_host=bastion["host"],
        bastion_port=int(bastion["port"]),
        host_key_alias=bastion["host_key_alias"],
        user=bastion["user"],
        target=answer["target"],
        login=answer["login"],
    )
    text = render_ssh_config(
        route, str(identity), str(grant.certificate), str(known_hosts)
    )
    grant.ssh_config.write_text(text)


def write_known_hosts(line: str) -> Path:
    """Keep the appliance's @cert-authority line in jit's own known_hosts."""
    path = config_dir() / "known_hosts"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = path.read_text().splitlines() if path.exists() else []
    if line.strip() not in lines:
        path.write_text("\n".join([*lines, line.strip()]) + "\n")

    return path


# Commands


def cmd_config(args: argparse.Namespace) -> int:
    """Write ~/.config/jit/config.toml."""
    config = check_config(args.server, args.user, args.ca_file)
    path = config_dir() / "config.toml"
    write_config(config, path)
    print(f"Wrote {path}")

    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    """Ask for a certificate to TARGET and run ssh through the bastion."""
    config = read_config(config_dir() / "config.toml")
    remove_expired(cache_dir())
    password = Secret(getpass.getpass(f"Password for {config.user}: "))
    code = Secret(getpass.getpass("Code from your authenticator app: "))
    private_key, public_key = generate_key()
    answer = call_api(
        config,
        "/api/v1/certificates",
        {
            "username": config.user,
            "password": password.reveal(),
            "code": code.reveal(),
            "target": args.target,
            "reason": args.reason,
            "duration": args.ttl,
            "public_key": public_key,
        },
    )
    grant = save_grant(answer, private_key, public_key, cache_dir())
    identity = _hand_key_over(grant, int(answer["expires_in"]))
    write_ssh_config(answer, grant, identity)
    _tell(answer, grant)
    argv = ["ssh", "-F", str(grant.ssh_config), args.target, *args.ssh_args]

    return subprocess.call(argv)


def _hand_key_over(grant: Grant, lifetime: int) -> Path:
    """Move the key into ssh-agent when one answers, else keep the file
    and have it removed at expiry; return what IdentityFile names."""
    if agent_available():
        add_to_agent(grant, lifetime)
        return grant.public_key
    start_reaper(grant, lifetime)

    return grant.key


def start_reaper(grant: Grant, lifetime: int) -> int:
    """Leave a detached process that deletes the grant's files at expiry.

    If it never runs (the laptop sleeps, reboots), the next ``jit`` run
    removes expired grants instead. Returns its process id, also kept
    in ``reaper.pid``.
    """
    script = '(sleep "$1" && rm -rf -- "$2") </dev/null >/dev/null 2>&1 & echo $!'
    started = subprocess.run(
        ["sh", "-c", script, "jit-reaper", str(max(lifetime, 1)), str(grant.directory)],
        capture_output=True,
        text=True,
        timeout=10,
        start_new_session=True,
    )
    pid = int(started.stdout.strip())
    (grant.directory / "reaper.pid").write_text(f"{pid}\n")

    return pid


def _tell(answer: dict[str, Any], grant: Grant) -> None:
    """Say what was issued and where its ssh_config is."""
    until = datetime.fromisoformat(answer["valid_before"]).astimezone()
    minutes = max(1, int(answer["expires_in"]) // 60)
    print(
        f"jit: certificate {answer['serial']} for {answer['target']} valid "
        f"until {until:%H:%M} ({minutes} min); reuse it with: "
        f"ssh -F {shlex.quote(str(grant.ssh_config))} {answer['target']}",
        file=sys.stderr,
    )


def build_parser() -> argparse.ArgumentParser:
    """Describe the commands."""
    parser = argparse.ArgumentParser(
        prog="jit", description="Just-in-time SSH access through jit-bastion."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    config = commands.add_parser("config", help="set the appliance and user")
    config.add_argument("--server", required=True, help="https://bastion:8443")
    config.add_argument("--user", required=True)
    config.add_argument("--ca-file", help="PEM file the server's TLS cert chains to")
    config.set_defaults(handler=cmd_config)
    ssh = commands.add_parser(
        "ssh",
        help="get a certificate and connect",
        usage="jit ssh TARGET -r REASON [--ttl DURATION] [-- SSH ARGS...]",
    )
    ssh.add_argument("target")
    ssh.add_argument("-r", "--reason", required=True, help="why, one line")
    ssh.add_argument("--ttl", help="how long, e.g. 30m (default: the appliance's)")
    ssh.set_defaults(handler=cmd_ssh)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jit``; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, extra = _split_ssh_args(argv)
    args = build_parser().parse_args(ours)
    args.ssh_args = extra
    try:
        status: int = args.handler(args)
    except ClientError as exc:
        print(f"jit: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

    return status


def _split_ssh_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split at the first ``--``: jit's arguments, then ssh's."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")

    return argv[:cut], argv[cut + 1 :]


if __name__ == "__main__":
    sys.exit(main())
