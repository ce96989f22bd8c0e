"""Policy: which rule decides, and what it allows."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.config import Config
from appliance.errors import Refused
from appliance.inventory import Target
from appliance.policy import check_rules, decide

WEB = Target("web01", "10.0.0.5", tags=("jit", "web"), pool="prod", vmid=101)
DB = Target("db01", "10.0.0.6", tags=("db",), vmid=102)


def _config(*rules: dict[str, object]) -> Config:
    return dataclasses.replace(Config(), policy=tuple(rules))


def test_without_rules_everyone_reaches_everything_as_themselves() -> None:
    decision = decide(Config(), "alice", (), WEB)

    assert decision.logins == ("alice",)
    assert decision.ports == (22,)
    assert decision.max_ttl == Config().certificates.max_ttl
    assert decision.may_start is False


def test_first_matching_rule_decides() -> None:
    config = _config(
        {
            "groups": ["ops"],
            "tags": ["web"],
            "max_ttl": "1h",
            "may_start": True,
            "logins": ["{user}", "debian"],
        },
        {"groups": ["*"], "targets": ["web01"], "max_ttl": "10m"},
    )

    ops = decide(config, "alice", ("ops",), WEB)
    dev = decide(config, "bob", ("dev",), WEB)

    assert (ops.max_ttl, ops.may_start, ops.logins) == (3600, True, ("alice", "debian"))
    assert (dev.max_ttl, dev.may_start) == (600, False)


def test_rule_max_ttl_never_exceeds_the_ca_maximum() -> None:
    config = _config({"max_ttl": "3d"})

    assert decide(config, "alice", (), WEB).max_ttl == Config().certificates.max_ttl


def test_a_user_no_rule_matches_is_refused() -> None:
    config = _config({"groups": ["ops"], "pools": ["prod"]})

    with pytest.raises(Refused, match="no policy rule lets 'bob' reach 'db01'"):
        decide(config, "bob", ("ops",), DB)


def test_rules_match_by_vmid_and_pool() -> None:
    config = _config({"vmids": [102]}, {"pools": ["prod"], "ports": [22, 443]})

    assert decide(config, "alice", (), DB).ports == (22,)
    assert decide(config, "alice", (), WEB).ports == (22, 443)


def test_check_rules_names_each_problem() -> None:
    problems = check_rules(
        [{"max_ttl": "never", "logins": ["bad name"], "ports": [0], "colour": 1}]
    )

    assert problems == [
        "policy rule 1: 'colour' is not a known setting",
        "policy rule 1: max_ttl: 'never' is not a duration: write a number with "
        "s, m, h or d, for example 15m",
        "policy rule 1: login 'bad name' is not a valid name",
        "policy rule 1: 0 is not a port",
    ]
