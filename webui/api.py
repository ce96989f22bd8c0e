"""The JSON API under /api/v1, described at /api/v1/openapi.json.

Every error is ``{"error": {"code": ..., "message": ...}}`` with a stable
code. The API never reads the session cookie, so cross-site requests
cannot use a browser's login, and CSRF tokens do not apply to it.
Issuing a certificate always takes the password and a fresh code; a
bearer token from ``/tokens`` only lists targets.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from itsdangerous import BadSignature, URLSafeTimedSerializer

from appliance import access, identity
from appliance.config import format_duration
from appliance.errors import AuthFailed, InputError, NotFound
from appliance.identity import User
from appliance.secret import Secret

from . import guard
from .connect import instructions
from .grants import find_record
from .targets import reachable_targets

logger = logging.getLogger(__name__)

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")

#: How long a bearer token from /tokens lists targets.
TOKEN_TTL = 15 * 60
BEARER_REFUSED = "the token is invalid or expired: get a new one from /api/v1/tokens"


def is_api_request() -> bool:
    """Whether the request is for the API (errors answer as JSON)."""
    return request.path.startswith("/api/")


def error_response(status: int, code: str, message: str) -> ResponseReturnValue:
    """The JSON body of every API error."""
    return jsonify(error={"code": code, "message": message}), status


@blueprint.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    """The OpenAPI 3.1 description of this API."""
    text = (resources.files("webui") / "static" / "openapi.json").read_text()

    return Response(text, mimetype="application/json")


@blueprint.post("/tokens")
def tokens() -> ResponseReturnValue:
    """Trade user name, password and code for a token that lists targets."""
    user = _authenticate(_body())
    token = _serializer().dumps({"uid": user.id, "name": user.name})

    return jsonify(token=token, expires_in=TOKEN_TTL), 201


@blueprint.get("/targets")
def targets() -> ResponseReturnValue:
    """The targets the token's holder may ask for."""
    user = _bearer_user()
    found = reachable_targets(guard.current_state(), user)

    return jsonify(
        targets=[
            {
                "name": t.name,
                "max_duration": format_duration(t.max_ttl),
                "max_seconds": t.max_ttl,
                "logins": list(t.logins),
                "reason_required": t.require_reason,
            }
            for t in found
        ]
    )


@blueprint.post("/certificates")
def certificates() -> ResponseReturnValue:
    """Check the login, then issue a certificate as the request page does."""
    body = _body()
    user = _authenticate(body)
    state = guard.current_state()
    issued = access.issue_certificate(
        state,
        user=user.name,
        target=_field(body, "target"),
        reason=_field(body, "reason", required=False),
        public_key=_field(body, "public_key"),
        ttl=_field(body, "duration", required=False) or None,
        source=guard.client_address(),
        via="api",
    )
    logger.info("[%s] %r got certificate %d", g.request_id, user.name, issued.serial)

    return jsonify(_answer(issued)), 201


def _answer(issued: access.Issued) -> dict[str, Any]:
    """The issued certificate with everything needed to use it."""
    state = guard.current_state()
    record = find_record(state.engine, issued.request_id)
    how = instructions(state, record)
    route = how.route

    return {
        **access.describe(issued),
        "expires_in": record.seconds_left(),
        "login": record.login,
        "bastion": {
            "host": route.bastion_host,
            "port": route.bastion_port,
            "user": route.user,
            "host_key_alias": route.host_key_alias,
        },
        "known_hosts": how.known_hosts,
        "ssh_config": how.ssh_config,
        "command": how.command,
    }


def _body() -> dict[str, Any]:
    """The request's JSON object, or InputError."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InputError("send a JSON object with Content-Type: application/json")

    return body


def _field(body: dict[str, Any], name: str, required: bool = True) -> str:
    """One string field of the body."""
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InputError(f"the field {name!r} must be a non-empty string")

    return value


def _authenticate(body: dict[str, Any]) -> User:
    """Check the body's user name, password and code (lockouts apply)."""
    return identity.authenticate(
        guard.current_state(),
        _field(body, "username"),
        Secret(_field(body, "password")),
        Secret(_field(body, "code")),
        address=guard.client_address(),
        via="api",
    )


def _serializer() -> URLSafeTimedSerializer:
    """Signs bearer tokens with the app's secret key."""
    return URLSafeTimedSerializer(current_app.secret_key or "", salt="jit-api-token")


def _bearer_user() -> User:
    """The account behind the request's bearer token; deny by default."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthFailed("send Authorization: Bearer TOKEN from /api/v1/tokens")
    try:
        claims = _serializer().loads(token, max_age=TOKEN_TTL)
        user = identity.find_user(guard.current_state().engine, claims["name"])
    except (BadSignature, NotFound, KeyError, TypeError):
        raise AuthFailed(BEARER_REFUSED) from None
    if user.id != claims.get("uid") or user.disabled or not user.enrolled:
        raise AuthFailed(BEARER_REFUSED)

    return user
