"""The JSON API: what it answers, as documented, and how it refuses."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from appliance import identity
from appliance.state import State
from tests.web.people import (
    Clock,
    Person,
    log_in,
    private_key,
    private_text,
    public_key_line,
    submit,
)

pytest_plugins = ["tests.web.fixtures"]

People = Callable[..., Person]
DOCUMENT = json.loads(
    (resources.files("webui") / "static" / "openapi.json").read_text()
)


def check_schema(name: str, value: Any) -> None:
    """Validate ``value`` against a schema of the OpenAPI document."""
    registry = Registry().with_resource(
        "urn:openapi", Resource.from_contents(DOCUMENT, DRAFT202012)
    )
    validator = Draft202012Validator(
        {"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=registry
    )
    validator.validate(value)


@pytest.fixture
def alice(people: People) -> Person:
    return people("alice")


def credentials(person: Person, clock: Clock, **extra: Any) -> dict[str, Any]:
    """A login body with the current code; the clock moves a step after."""
    body = {"username": person.name, "password": person.password}
    body["code"] = person.code(clock)
    clock.advance()
    return {**body, **extra}


def issue(web: FlaskClient, person: Person, clock: Clock, **fields: Any) -> Any:
    """POST /api/v1/certificates with good defaults overridden by ``fields``."""
    body = credentials(
        person,
        clock,
        target="web01",
        reason="deploy release 42",
        duration="10m",
        public_key=public_key_line(),
    )
    body.update(fields)
    return web.post("/api/v1/certificates", json=body)


def test_openapi_document_describes_every_api_route(app: Flask) -> None:
    routes = {
        rule.rule.removeprefix("/api/v1")
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/")
    }

    assert DOCUMENT["openapi"].startswith("3.1")
    assert set(DOCUMENT["paths"]) == routes
    Draft202012Validator.check_schema(DOCUMENT["components"]["schemas"]["Certificate"])


def test_openapi_document_is_served(web: FlaskClient) -> None:
    response = web.get("/api/v1/openapi.json")

    assert response.status_code == 200
    assert response.get_json() == DOCUMENT


def test_certificate_is_issued_as_documented(
    web: FlaskClient, alice: Person, clock: Clock, web_state: State
) -> None:
    response = issue(web, alice, clock)

    body = response.get_json()
    assert response.status_code == 201, body
    check_schema("Certificate", body)
    assert body["certificate"].startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert body["principals"] == ["alice"]
    assert 590 <= body["expires_in"] <= 600
    assert body["bastion"] == {
        "host": "bastion.test",
        "port": 2222,
        "user": "alice",
        "host_key_alias": "bastion.test",
    }
    assert body["known_hosts"] == web_state.ca.known_hosts_line(web_state.host_names())
    assert "ProxyJump jit-bastion" in body["ssh_config"]
    assert body["command"] == "ssh -F ~/.ssh/jit/web01.conf web01"


def test_token_lists_the_targets_policy_allows(
    web: FlaskClient, alice: Person, clock: Clock
) -> None:
    token = web.post("/api/v1/tokens", json=credentials(alice, clock)).get_json()
    check_schema("Token", token)

    response = web.get(
        "/api/v1/targets", headers={"Authorization": f"Bearer {token['token']}"}
    )

    check_schema("Targets", response.get_json())
    assert [t["name"] for t in response.get_json()["targets"]] == ["web01"]


@pytest.mark.parametrize(
    "header", ["", "Bearer", "Bearer not-a-token", "Basic YWxpY2U6eA=="]
)
def test_targets_refuse_a_missing_or_bad_token(web: FlaskClient, header: str) -> None:
    response = web.get("/api/v1/targets", headers={"Authorization": header})

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "auth_failed"


def test_token_of_a_disabled_user_stops_working(
    web: FlaskClient, alice: Person, clock: Clock, web_state: State
) -> None:
    token = web.post("/api/v1/tokens", json=credentials(alice, clock)).get_json()
    identity.set_disabled(web_state.engine, "alice")

    response = web.get(
        "/api/v1/targets", headers={"Authorization": f"Bearer {token['token']}"}
    )

    assert response.status_code == 401


BAD = {
    "wrong password": ({"password": "not the password"}, 401, "auth_failed"),
    "wrong code": ({"code": "000000"}, 401, "auth_failed"),
    "unknown target": ({"target": "db99"}, 404, "not_found"),
    "empty reason": ({"reason": ""}, 400, "bad_input"),
    "long reason": ({"reason": "y" * 501}, 400, "bad_input"),
    "control characters": ({"reason": "ok\x07bell"}, 400, "bad_input"),
    "duration over max": ({"duration": "1d"}, 403, "refused"),
    "not a duration": ({"duration": "-5m"}, 400, "bad_input"),
    "garbage key": ({"public_key": "hello"}, 400, "bad_input"),
    "rsa 1024": ({"public_key": public_key_line("rsa", 1024)}, 400, "bad_input"),
    "missing target": ({"target": None}, 400, "bad_input"),
    "number as reason": ({"reason": 42}, 400, "bad_input"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_gets_a_json_error_with_a_stable_code(
    web: FlaskClient, alice: Person, clock: Clock, case: str
) -> None:
    fields, status, code = BAD[case]
    if case == "wrong code" and alice.code(clock) == "000000":
        fields = {"code": "111111"}

    response = issue(web, alice, clock, **fields)

    body = response.get_json()
    assert response.status_code == status, body
    check_schema("Error", body)
    assert body["error"]["code"] == code


def test_private_key_is_refused_and_not_echoed(
    web: FlaskClient, alice: Person, clock: Clock
) -> None:
    text = private_text(private_key())

    response = issue(web, alice, clock, public_key=text)

    assert response.status_code == 400
    assert "private key" in response.get_json()["error"]["message"]
    assert text.splitlines()[1] not in response.get_data(as_text=True)


def test_same_code_twice_is_refused(
    web: FlaskClient, alice: Person, clock: Clock
) -> None:
    body = credentials(alice, clock)
    first = web.post("/api/v1/tokens", json=body)
    second = web.post("/api/v1/tokens", json=body)

    assert first.status_code == 201
    assert second.status_code == 401


def test_body_that_is_not_a_json_object_is_refused(web: FlaskClient) -> None:
    for data in ("not json", "[1, 2]"):
        response = web.post(
            "/api/v1/certificates", data=data, content_type="application/json"
        )
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == "bad_input"


def test_unknown_path_and_wrong_method_answer_json(web: FlaskClient) -> None:
    missing = web.get("/api/v1/nothing")
    wrong = web.get("/api/v1/certificates")

    assert (missing.status_code, missing.get_json()["error"]["code"]) == (
        404,
        "not_found",
    )
    assert (wrong.status_code, wrong.get_json()["error"]["code"]) == (
        405,
        "method_not_allowed",
    )


def test_lockout_is_shared_by_the_form_and_the_api(
    web: FlaskClient, alice: Person, clock: Clock
) -> None:
    wrong = {"username": "alice", "password": "wrong password", "code": "123456"}
    for _ in range(3):
        submit(web, "/login", wrong)
    for _ in range(2):
        web.post("/api/v1/tokens", json=wrong)

    api = web.post("/api/v1/tokens", json=credentials(alice, clock))
    form = log_in(web, alice, clock)

    assert api.status_code == 401
    assert form.status_code == 401


def test_api_ignores_the_browser_session(
    web: FlaskClient, alice: Person, clock: Clock
) -> None:
    log_in(web, alice, clock)

    response = web.post(
        "/api/v1/certificates",
        json={"target": "web01", "reason": "no login", "public_key": public_key_line()},
    )

    assert response.status_code == 400
    assert "'username'" in response.get_json()["error"]["message"]
