"""The appliance's configuration: one commented TOML file in the state
directory, overridden by ``JIT_BASTION_<SECTION>_<KEY>`` variables.

Every key has a default, listed in ``config.example.toml`` beside this
module; that file is also what ``init`` writes. :func:`load_config`
collects every problem before it fails, one line each, so an operator
fixes a file in one pass.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .secret import Secret

ENV_PREFIX = "JIT_BASTION_"
DEFAULT_STATE = Path("/var/lib/jit-bastion")
CONFIG_NAME = "config.toml"

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int) -> int:
    """Return the seconds in ``30s``, ``15m``, ``8h``, ``1d`` or a number."""
    if isinstance(text, int) and not isinstance(text, bool):
        seconds = text
    else:
        match = _DURATION.match(str(text))
        if match is None:
            raise ValueError(
                f"{text!r} is not a duration: write a number with s, m, h "
                "or d, for example 15m"
            )
        seconds = int(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")

    return seconds


def format_duration(seconds: int) -> str:
    """Return ``seconds`` in the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"

    return f"{seconds}s"


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port`` or a bare host."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or str(default_port)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")

    return host, int(port)


def parse_guest_addresses(entries: tuple[str, ...]) -> dict[int | str, str]:
    """Read ``proxmox.addresses`` (``GUEST=ADDRESS``) into a mapping.

    A vmid becomes an int key; a name or ``name.node`` stays a string.
    """
    found: dict[int | str, str] = {}
    for entry in entries:
        guest, equals, address = (part.strip() for part in entry.partition("="))
        if not equals or not guest or not address or " " in address:
            raise ValueError(
                f"{entry!r} is not GUEST=ADDRESS, e.g. 101=10.0.0.5 or web01=10.0.0.5"
            )
        found[int(guest) if guest.isdigit() else guest] = address

    return found


@dataclass(frozen=True)
class ApplianceSection:
    """[appliance]: who the appliance is and where it keeps its records."""

    name: str = "bastion.invalid"
    database_url: str = ""


@dataclass(frozen=True)
class SSHSection:
    """[ssh]: the bastion's listener and how it treats connections."""

    listen: str = "0.0.0.0:2222"
    login_timeout: int = 30
    keepalive_interval: int = 30
    close_on_expiry: bool = True
    skew: int = 60
    connect_timeout: int = 10
    allowed_ports: tuple[int, ...] = (22,)
    revocation_poll: int = 1
    max_tunnels_per_connection: int = 100
    ciphers: tuple[str, ...] = (
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
        "aes128-ctr",
        "aes256-ctr",
    )


@dataclass(frozen=True)
class CertificatesSection:
    """[certificates]: what the CA puts in a user certificate."""

    default_ttl: int = 15 * 60
    max_ttl: int = 8 * 3600
    source_addresses: tuple[str, ...] = ()
    pin_source_address: bool = False


@dataclass(frozen=True)
class WebSection:
    """[web]: the Flask UI behind gunicorn."""

    listen: str = "0.0.0.0:8443"
    public_url: str = ""
    tls_certificate: str = ""
    tls_key: str = ""
    trusted_proxies: tuple[str, ...] = ()
    workers: int = 2
    invitation_ttl: int = 24 * 3600
    lockout_failures: int = 5
    lockout_window: int = 15 * 60


@dataclass(frozen=True)
class ProxmoxSection:
    """[proxmox]: the cluster whose guests are targets."""

    url: str = ""
    token_id: str = ""
    token_secret: Secret = field(default_factory=lambda: Secret(""))
    token_secret_file: str = ""
    verify_tls: str = "true"
    timeout: int = 5
    expose_tag: str = "jit"
    cache_seconds: int = 5
    start_timeout: int = 120
    target_networks: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkSection:
    """[network]: who may reach the appliance and where it may connect."""

    client_networks: tuple[str, ...] = ()
    target_networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuditSection:
    """[audit]: where the audit trail goes besides the database."""

    jsonl_path: str = ""
    syslog: str = ""
    syslog_app_name: str = "jit-bastion"
    head_interval: int = 300


@dataclass(frozen=True)
class Config:
    """The whole configuration, one frozen dataclass per TOML table."""

    appliance: ApplianceSection = field(default_factory=ApplianceSection)
    ssh: SSHSection = field(default_factory=SSHSection)
    certificates: CertificatesSection = field(default_factory=CertificatesSection)
    web: WebSection = field(default_factory=WebSection)
    proxmox: ProxmoxSection = field(default_factory=ProxmoxSection)
    audit: AuditSection = field(default_factory=AuditSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    policy: tuple[Mapping[str, Any], ...] = ()


_DURATION_KEYS = {
    "login_timeout",
    "keepalive_interval",
    "skew",
    "connect_timeout",
    "revocation_poll",
    "default_ttl",
    "max_ttl",
    "invitation_ttl",
    "lockout_window",
    "timeout",
    "start_timeout",
    "head_interval",
    "cache_seconds",
}


def example_config_text() -> str:
    """Return the commented example config that ``init`` writes."""
    return (resources.files(__package__) / "config.example.toml").read_text()


def load_config(state: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``state/config.toml`` and the environment into a :class:`Config`.

    Raises :class:`ConfigError` listing every problem found, one per line.
    """
    environ = os.environ if environ is None else environ
    path = state / CONFIG_NAME
    problems: list[str] = []
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    _apply_environment(raw, environ, problems)
    config = _build(raw, problems, str(path))
    if not problems:
        problems.extend(_cross_check(config))
    if problems:
        raise ConfigError("\n".join(problems))

    return config


def _apply_environment(
    raw: dict[str, Any], environ: Mapping[str, str], problems: list[str]
) -> None:
    """Lay ``JIT_BASTION_SECTION_KEY`` variables over the file's values."""
    sections = {f.name for f in dataclasses.fields(Config)} - {"policy"}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "STATE":
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        if section not in sections or not key:
            problems.append(f"{name}: no such setting")
            continue
        raw.setdefault(section, {})[key] = _parse_env_value(value)


def _parse_env_value(value: str) -> Any:
    """Read an environment value as TOML when it parses, else as text."""
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _build(raw: dict[str, Any], problems: list[str], where: str) -> Config:
    """Turn parsed TOML into sections, noting each bad key."""
    built: dict[str, Any] = {}
    for fld in dataclasses.fields(Config):
        value = raw.pop(fld.name, None)
        if fld.name == "policy":
            built["policy"] = _build_policy(value, problems, where)
        elif value is not None:
            section_type = type(getattr(Config(), fld.name))
            built[fld.name] = _build_section(
                section_type, fld.name, value, problems, where
            )
    for unknown in raw:
        problems.append(f"{where}: [{unknown}] is not a known section")

    return Config(**built)


def _build_policy(value: Any, problems: list[str], where: str) -> tuple[Any, ...]:
    """Keep ``[[policy]]`` tables as they are; :mod:`policy` reads them."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        problems.append(f"{where}: policy must be a list of [[policy]] tables")
        return ()

    return tuple(value)


def _build_section(
    section_type: type[Any],
    name: str,
    values: Any,
    problems: list[str],
    where: str,
) -> Any:
    """Build one section dataclass, converting and checking each key."""
    if not isinstance(values, dict):
        problems.append(f"{where}: [{name}] must be a table")
        return section_type()
    defaults = section_type()
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in {f.name for f in dataclasses.fields(section_type)}:
            problems.append(f"{where}: {name}.{key} is not a known setting")
            continue
        try:
            kwargs[key] = _convert(key, value, getattr(defaults, key))
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}: {name}.{key}: {exc}")

    return section_type(**kwargs)


def _convert(key: str, value: Any, default: Any) -> Any:
    """Convert one value to the type of its default."""
    if key in _DURATION_KEYS:
        return parse_duration(value)
    if isinstance(default, Secret):
        if not isinstance(value, str):
            raise TypeError("must be a string")
        return Secret(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"must be true or false, not {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"must be a whole number, not {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise TypeError(f"must be a list, not {value!r}")
        return tuple(value)
    if isinstance(value, bool):
        # JIT_BASTION_PROXMOX_VERIFY_TLS=false reads as a TOML boolean.
        return "true" if value else "false"
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {value!r}")

    return value


def _cross_check(config: Config) -> list[str]:
    """Check values whose meaning depends on other values."""
    problems = []
    for key in ("ssh.listen", "web.listen"):
        section, _, name = key.partition(".")
        try:
            parse_hostport(getattr(getattr(config, section), name), 0)
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    certs = config.certificates
    if certs.default_ttl > certs.max_ttl:
        problems.append("certificates.default_ttl is longer than certificates.max_ttl")
    listed = (
        ("certificates.source_addresses", certs.source_addresses),
        ("network.client_networks", config.network.client_networks),
        ("network.target_networks", config.network.target_networks),
    )
    for key, networks in listed:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                problems.append(f"{key}: {network!r} is not an address or network")
    try:
        parse_guest_addresses(config.proxmox.addresses)
    except ValueError as exc:
        problems.append(f"proxmox.addresses: {exc}")
    bad_ports = [p for p in config.ssh.allowed_ports if not 0 < p < 65536]
    if bad_ports:
        problems.append(f"ssh.allowed_ports: {bad_ports!r} are not ports")

    return problems


def state_dir(option: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """Return the state directory from ``--state``, the environment or default."""
    environ = os.environ if environ is None else environ
    chosen = option or environ.get(ENV_PREFIX + "STATE") or str(DEFAULT_STATE)

    return Path(chosen).absolute()
