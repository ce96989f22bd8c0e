"""The config file: defaults, overrides, and one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import (
    Config,
    example_config_text,
    load_config,
    parse_duration,
    parse_hostport,
)
from appliance.errors import ConfigError
from appliance.state import set_config_value


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "config.toml").write_text(text)
    return tmp_path


def test_example_file_holds_every_default(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, example_config_text()), {}) == Config()


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path, {}) == Config()


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {"JIT_BASTION_SSH_SKEW": "30s", "JIT_BASTION_SSH_CLOSE_ON_EXPIRY": "false"}

    config = load_config(_write(tmp_path, example_config_text()), env)

    assert config.ssh.skew == 30
    assert config.ssh.close_on_expiry is False


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        '[ssh]\nskew = "soon"\nlisten = "nowhere:99999"\nbogus = 1\n'
        '[certificates]\ndefault_ttl = "9h"\nmax_ttl = "8h"\n[nonsense]\n'
    )
    env = {"JIT_BASTION_NOPE_X": "1"}

    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text), env)

    lines = str(caught.value).splitlines()
    assert any("ssh.skew: 'soon' is not a duration" in line for line in lines)
    assert any("ssh.bogus is not a known setting" in line for line in lines)
    assert any("[nonsense] is not a known section" in line for line in lines)
    assert any("JIT_BASTION_NOPE_X: no such setting" in line for line in lines)


def test_cross_checks_run_when_types_are_right(tmp_path: Path) -> None:
    text = '[certificates]\ndefault_ttl = "9h"\nmax_ttl = "8h"\n'

    with pytest.raises(ConfigError, match="default_ttl is longer than"):
        load_config(_write(tmp_path, text), {})


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[ssh\n"), {})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900), ("30s", 30), ("8h", 28800), ("1d", 86400), (" 45 ", 45), (90, 90)],
)
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["forever", "0", "-5m", "15x", "", "1.5h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_host_and_port_forms() -> None:
    assert parse_hostport("10.0.0.1:2222", 22) == ("10.0.0.1", 2222)
    assert parse_hostport("[::1]:2222", 22) == ("::1", 2222)
    assert parse_hostport("web01", 22) == ("web01", 22)
    with pytest.raises(ValueError):
        parse_hostport("web01:0", 22)


def test_set_config_value_touches_one_key_of_one_table() -> None:
    text = set_config_value(example_config_text(), "ssh", "listen", '1.2.3.4:22"x')

    assert 'listen = "1.2.3.4:22\\"x"' in text
    assert 'listen = "0.0.0.0:8443"' in text
