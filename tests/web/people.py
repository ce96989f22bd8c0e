"""Helpers for web, API and client tests: people, the clock, forms.

Test modules import these; the fixtures that use them live in
:mod:`tests.web.fixtures`, loaded as a plugin.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyotp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from appliance import identity
from appliance.secret import Secret
from appliance.state import State

PASSWORD = "correct horse battery"

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
BASE_URL = "https://localhost"


class Clock:
    """A clock that moves only when told: ``clock.advance(30)``."""

    def __init__(self) -> None:
        # Ten seconds into a 30-second step, never near its edge.
        self.now = float(int(time.time()) // 30 * 30 + 10)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = 30) -> None:
        self.now += seconds


@dataclass
class Person:
    """An enrolled account and what its owner knows."""

    name: str
    password: str
    secret: str
    recovery_codes: list[str]

    def code(self, clock: Callable[[], float], steps: int = 0) -> str:
        """The TOTP code at ``clock`` plus ``steps`` steps of 30 seconds."""
        return str(pyotp.TOTP(self.secret).at(clock() + 30 * steps))


def enroll_person(
    state: State,
    name: str,
    clock: Callable[[], float],
    *,
    role: str = "user",
    groups: tuple[str, ...] = (),
) -> Person:
    """Create, invite and enroll an account; its next code is one step on."""
    identity.add_user(state.engine, name, role=role, groups=groups)
    token = identity.invite(state, name)
    secret = identity.open_invitation(state, token).secret.reveal()
    code = pyotp.TOTP(secret).at(clock())
    codes = identity.enroll(state, token, Secret(PASSWORD), Secret(code))
    if isinstance(clock, Clock):
        clock.advance()
    return Person(name, PASSWORD, secret, [c.reveal() for c in codes])


CSRF = re.compile(r'name="csrf_token"[^>]*?value="([^"]+)"')


def csrf_token(client: FlaskClient, path: str) -> str:
    """Open ``path`` and return the CSRF token of its first form."""
    page = client.get(path)
    found = CSRF.search(page.get_data(as_text=True))
    assert found, f"no CSRF token on {path}: {page.status}"
    return found[1]


def submit(
    client: FlaskClient, path: str, data: dict[str, object], form_page: str = ""
) -> TestResponse:
    """Post a form to ``path`` with the token from ``form_page`` (or path)."""
    token = csrf_token(client, form_page or path)
    return client.post(path, data={"csrf_token": token, **data})


def log_in(client: FlaskClient, person: Person, clock: Clock) -> TestResponse:
    """Log ``person`` in through the form; the clock moves a step after."""
    response = submit(
        client,
        "/login",
        {
            "username": person.name,
            "password": person.password,
            "code": person.code(clock),
        },
    )
    clock.advance()
    return response


def public_key_line(kind: str = "ed25519", bits: int = 3072) -> str:
    """A fresh OpenSSH public key line of ``kind``: ed25519, ecdsa or rsa."""
    return public_line(private_key(kind, bits))


def private_key(kind: str = "ed25519", bits: int = 3072) -> PrivateKey:
    """A fresh private key of ``kind``."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def public_line(key: PrivateKey) -> str:
    """The OpenSSH public key line of ``key``."""
    data = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return data.decode() + " tester@laptop"


def private_text(key: PrivateKey) -> str:
    """``key`` in OpenSSH's private key format."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


def jit_bastion(
    state: State, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``jit-bastion --state DIR ARGS`` for ``state``."""
    argv = [sys.executable, "-m", "appliance.cli", "--state", str(state.path), *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
