"""The targets a person may ask for, as policy decides."""

from __future__ import annotations

from dataclasses import dataclass

from appliance import inventory, policy
from appliance.errors import Refused
from appliance.identity import User
from appliance.state import State


@dataclass(frozen=True)
class Reachable:
    """A target the person may ask for, and the limits for it."""

    name: str
    max_ttl: int
    logins: tuple[str, ...]
    require_reason: bool


def reachable_targets(state: State, user: User) -> list[Reachable]:
    """Every target some policy rule lets ``user`` reach, by name."""
    found = []
    for target in inventory.list_targets(state):
        try:
            decision = policy.decide(state.config, user.name, user.groups, target)
        except Refused:
            continue
        found.append(
            Reachable(
                target.name,
                decision.max_ttl,
                decision.logins,
                decision.require_reason,
            )
        )

    return found
