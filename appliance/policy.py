"""Policy: who may reach which target, for how long, as whom.

Rules come from ``[[policy]]`` tables in the config. A rule matches a
user when it has no ``groups`` key, lists ``"*"``, or shares a group
with the user; it matches a target when it names it by static name,
Proxmox tag, pool or guest id (a rule naming none of these matches every
target). The first matching rule decides; with no rules at all, every
user may reach every target as themselves. A user that no rule matches
is refused: deny by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import Config, parse_duration
from .errors import Refused
from .inventory import Target
from .names import is_login_name

_RULE_KEYS = {
    "groups",
    "targets",
    "tags",
    "pools",
    "vmids",
    "max_ttl",
    "require_reason",
    "may_start",
    "logins",
    "ports",
}


@dataclass(frozen=True)
class Decision:
    """What a matching rule allows for one user and one target."""

    max_ttl: int
    require_reason: bool
    may_start: bool
    logins: tuple[str, ...]
    ports: tuple[int, ...]


def decide(
    config: Config, user: str, groups: Sequence[str], target: Target
) -> Decision:
    """Return what ``user`` may do on ``target``, or raise Refused."""
    if not config.policy:
        return _decision(config, {}, user)
    for rule in config.policy:
        if _matches_user(rule, groups) and _matches_target(rule, target):
            return _decision(config, rule, user)

    raise Refused(f"no policy rule lets {user!r} reach {target.name!r}")


def _decision(config: Config, rule: Mapping[str, Any], user: str) -> Decision:
    """Fill a decision from one rule and the config's defaults."""
    max_ttl = config.certificates.max_ttl
    if "max_ttl" in rule:
        max_ttl = min(max_ttl, parse_duration(rule["max_ttl"]))
    logins = tuple(
        login.replace("{user}", user) for login in rule.get("logins", ["{user}"])
    )

    return Decision(
        max_ttl=max_ttl,
        require_reason=bool(rule.get("require_reason", True)),
        may_start=bool(rule.get("may_start", False)),
        logins=logins,
        ports=tuple(rule.get("ports", config.ssh.allowed_ports)),
    )


def _matches_user(rule: Mapping[str, Any], groups: Sequence[str]) -> bool:
    """Return whether a rule's ``groups`` take in a user of ``groups``."""
    wanted = rule.get("groups")
    if not wanted or "*" in wanted:
        return True

    return bool(set(wanted) & set(groups))


def _matches_target(rule: Mapping[str, Any], target: Target) -> bool:
    """Return whether a rule names ``target`` in any of its selectors."""
    selectors = ("targets", "tags", "pools", "vmids")
    if not any(key in rule for key in selectors):
        return True

    return (
        target.name in rule.get("targets", ())
        or bool(set(target.tags) & set(rule.get("tags", ())))
        or (target.pool is not None and target.pool in rule.get("pools", ()))
        or (target.vmid is not None and target.vmid in rule.get("vmids", ()))
    )


def check_rules(rules: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return one line per problem found in the ``[[policy]]`` rules."""
    problems = []
    for number, rule in enumerate(rules, start=1):
        where = f"policy rule {number}"
        for key in sorted(set(rule) - _RULE_KEYS):
            problems.append(f"{where}: {key!r} is not a known setting")
        if "max_ttl" in rule:
            try:
                parse_duration(rule["max_ttl"])
            except ValueError as exc:
                problems.append(f"{where}: max_ttl: {exc}")
        for login in rule.get("logins", []):
            if not is_login_name(str(login).replace("{user}", "user")):
                problems.append(f"{where}: login {login!r} is not a valid name")
        for port in rule.get("ports", []):
            if not isinstance(port, int) or not 0 < port < 65536:
                problems.append(f"{where}: {port!r} is not a port")

    return problems
