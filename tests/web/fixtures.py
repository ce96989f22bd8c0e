"""Fixtures for the web UI, the API and the ``jit`` client; load with
``pytest_plugins = ["tests.web.fixtures"]``.

``clock`` replaces the one clock that logins read, so TOTP steps and
lockout windows move only when a test says so. ``web_state`` is an
initialised state directory with one static target, ``web01``;
``people`` enrolls accounts through the real invitation flow and hands
back their password and TOTP secret. ``web`` is Flask's test client
over https, sending a same-origin Referer as a browser does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import argon2
import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance import identity
from appliance.inventory import add_static_target
from appliance.state import State, initialize
from tests.harness import ApplianceUnderTest
from tests.netlab import Host

from .people import BASE_URL, Clock, Person, enroll_person
from .server import WebUnderTest, free_loopback_port


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The clock of logins, lockouts and invitations, under test control."""
    fake = Clock()
    monkeypatch.setattr(identity, "_clock", fake)
    return fake


@pytest.fixture
def light_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap argon2id parameters: same code path, a fraction of the time."""
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(identity, "_hasher", hasher)
    monkeypatch.setattr(identity, "_DUMMY", [])


@pytest.fixture
def web_state(
    request: pytest.FixtureRequest, tmp_path: Path, light_hashing: None
) -> Iterator[State]:
    """A fresh state directory with one static target, web01.

    A test that also asks for ``database_url`` gets its store there.
    """
    url = None
    if "database_url" in request.fixturenames:
        url = request.getfixturevalue("database_url")
    state = initialize(
        tmp_path / "state",
        name="bastion.test",
        ssh_listen="127.0.0.1:2222",
        web_listen="127.0.0.1:8443",
        database_url=url,
    )
    add_static_target(state.engine, "web01", "192.0.2.10", 22)
    yield state
    state.engine.dispose()


@pytest.fixture
def people(web_state: State, clock: Clock) -> Callable[..., Person]:
    """Enroll a person: ``people("alice", role="admin")``."""

    def make(name: str, **kwargs: object) -> Person:
        return enroll_person(web_state, name, clock, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def app(web_state: State) -> Flask:
    """The web UI for ``web_state``."""
    from webui import create_app

    return create_app(web_state)


@pytest.fixture
def web(app: Flask) -> FlaskClient:
    """A browser-like test client over https."""
    test_client = app.test_client()
    test_client.environ_base.update(
        {"HTTP_REFERER": BASE_URL + "/", "REMOTE_ADDR": "198.51.100.7"}
    )
    return test_client


@pytest.fixture
def web_server(appliance: ApplianceUnderTest) -> Iterator[WebUnderTest]:
    """``serve web`` (not started yet) in the bastion's own host."""
    host = appliance.host
    server = WebUnderTest(appliance, host, host.free_port(8443))
    yield server
    server.stop()


@pytest.fixture
def loopback_web_server(appliance: ApplianceUnderTest) -> Iterator[WebUnderTest]:
    """``serve web`` (not started yet) on 127.0.0.1, where a browser runs."""
    server = WebUnderTest(appliance, Host("web", "127.0.0.1"), free_loopback_port())
    yield server
    server.stop()
