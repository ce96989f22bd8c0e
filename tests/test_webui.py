"""The web UI through Flask's test client: pages, forms and their refusals."""

from __future__ import annotations

import html
import io
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from appliance import audit, identity
from appliance.state import State
from appliance.store import certificates, revocations, users
from tests.web.people import (
    PASSWORD,
    Clock,
    Person,
    csrf_token,
    jit_bastion,
    log_in,
    private_key,
    private_text,
    public_key_line,
    submit,
)

pytest_plugins = ["tests.web.fixtures"]

People = Callable[..., Person]


def text(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def ask(web: FlaskClient, **fields: object) -> TestResponse:
    """Post the request form with good defaults, overridden by ``fields``."""
    data: dict[str, object] = {
        "target": "web01",
        "reason": "rotate the TLS certificate",
        "duration": "10m",
        "public_key": public_key_line(),
    }
    data.update(fields)
    return submit(web, "/", data)


@pytest.fixture
def alice(people: People, web: FlaskClient, clock: Clock) -> Person:
    """Alice, enrolled and logged in on ``web``."""
    person = people("alice")
    assert log_in(web, person, clock).status_code == 302
    return person


# Headers, cookies, pages


def test_pages_carry_a_strict_policy_and_security_headers(web: FlaskClient) -> None:
    response = web.get("/login")

    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert "max-age" in response.headers["Strict-Transport-Security"]


def test_session_cookie_is_secure_httponly_samesite_strict(
    web: FlaskClient,
) -> None:
    cookie = web.get("/login").headers["Set-Cookie"]

    assert cookie.startswith("__Host-jit-session=")
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in cookie


def test_pages_have_no_inline_script_or_style(web: FlaskClient, alice: Person) -> None:
    redirect = ask(web)
    pages = [web.get(path) for path in ("/", "/mine", redirect.location)]

    for page in pages:
        body = text(page)
        assert page.status_code == 200
        assert not re.search(r"<script(?![^>]*\bsrc=)", body)
        assert not re.search(r"\s(style|on[a-z]+)=", body)


def test_visitor_is_sent_to_login(web: FlaskClient) -> None:
    for path in ("/", "/mine", "/admin/users"):
        response = web.get(path)
        assert response.status_code == 302
        assert response.location.startswith("/login")


# Enrollment


def enroll_page(web: FlaskClient, state: State, name: str = "bob") -> str:
    identity.add_user(state.engine, name)
    return "/enroll/" + identity.invite(state, name).reveal()


def secret_on(page: TestResponse) -> str:
    found = re.search(r'id="totp-secret"[^>]*>([^<]+)<', text(page))
    assert found
    return found[1]


def test_enrollment_shows_qr_code_and_secret_and_activates_on_one_code(
    web: FlaskClient, web_state: State, clock: Clock
) -> None:
    path = enroll_page(web, web_state)
    page = web.get(path)
    shown = secret_on(page)
    secret = identity.import_totp_secret(identity.Secret(shown)).reveal()
    assert "<svg" in text(page) and 'class="segno"' in text(page)
    assert not identity.find_user(web_state.engine, "bob").enrolled

    code = pyotp.TOTP(secret).at(clock())
    done = submit(web, path, {"password": PASSWORD, "confirm": PASSWORD, "code": code})

    assert done.status_code == 200
    assert (
        len(re.findall(r"<li><code>[a-z2-7]{5}-[a-z2-7]{5}</code>", text(done))) == 10
    )
    assert identity.find_user(web_state.engine, "bob").enrolled
    refused = submit(
        web, "/login", {"username": "bob", "password": PASSWORD, "code": code}
    )
    assert refused.status_code == 401


@pytest.mark.parametrize(
    ("password", "confirm", "code", "message"),
    [
        ("short pw", "short pw", None, "at least 12 characters"),
        (PASSWORD, PASSWORD + "x", None, "the two passwords differ"),
        (PASSWORD, PASSWORD, "000000", "that code does not match"),
    ],
)
def test_enrollment_refuses_bad_input_and_stays_open(
    web: FlaskClient,
    web_state: State,
    clock: Clock,
    password: str,
    confirm: str,
    code: str | None,
    message: str,
) -> None:
    path = enroll_page(web, web_state)
    secret = secret_on(web.get(path)).replace(" ", "")
    good = pyotp.TOTP(secret).at(clock())
    if code == good:
        code = "111111"

    response = submit(
        web,
        path,
        {"password": password, "confirm": confirm, "code": code or good},
    )

    assert response.status_code == 400
    assert message in html.unescape(text(response))
    assert web.get(path).status_code == 200


def test_invitation_used_twice_is_refused(
    web: FlaskClient, web_state: State, clock: Clock
) -> None:
    path = enroll_page(web, web_state)
    secret = secret_on(web.get(path)).replace(" ", "")
    token = csrf_token(web, path)
    fields = {"password": PASSWORD, "confirm": PASSWORD, "csrf_token": token}
    web.post(path, data={**fields, "code": pyotp.TOTP(secret).at(clock())})
    clock.advance()

    reopened = web.get(path)
    fields["csrf_token"] = csrf_token(web, "/login")
    again = web.post(path, data={**fields, "code": pyotp.TOTP(secret).at(clock())})

    for response in (reopened, again):
        assert response.status_code == 404
        assert "used or expired" in text(response)


def test_expired_invitation_is_refused(
    web: FlaskClient, web_state: State, clock: Clock
) -> None:
    path = enroll_page(web, web_state)
    clock.advance(web_state.config.web.invitation_ttl + 1)

    response = web.get(path)

    assert response.status_code == 404
    assert "used or expired" in text(response)


# Login


def test_login_starts_a_fresh_session(
    web: FlaskClient, people: People, clock: Clock
) -> None:
    alice = people("alice")
    web.get("/login")
    with web.session_transaction() as session:
        session["planted"] = "by an attacker"
        before = dict(session)

    log_in(web, alice, clock)

    with web.session_transaction() as session:
        assert "planted" not in session
        assert session["name"] == "alice"
        assert session.get("csrf_token") != before.get("csrf_token")


@pytest.mark.parametrize("wrong", ["password", "code", "user"])
def test_login_failure_says_the_same_whatever_failed(
    web: FlaskClient, people: People, clock: Clock, wrong: str
) -> None:
    alice = people("alice")
    fields = {"username": "alice", "password": PASSWORD, "code": alice.code(clock)}
    fields[{"user": "username"}.get(wrong, wrong)] = {
        "password": "not the password",
        "code": "000000" if fields["code"] != "000000" else "111111",
        "user": "mallory",
    }[wrong]

    response = submit(web, "/login", fields)

    assert response.status_code == 401
    assert html.escape(identity.LOGIN_FAILED, quote=True) in text(response)
    assert alice.code(clock) not in text(response)


def test_sixth_login_is_refused_after_five_failures(
    web: FlaskClient, people: People, clock: Clock
) -> None:
    alice = people("alice")
    for _ in range(5):
        bad = {"username": "alice", "password": "wrong password", "code": "123456"}
        assert submit(web, "/login", bad).status_code == 401

    assert log_in(web, alice, clock).status_code == 401
    clock.advance(web_state_window(web))
    assert log_in(web, alice, clock).status_code == 302


def web_state_window(web: FlaskClient) -> int:
    state: State = web.application.extensions["jit_bastion.state"]
    return state.config.web.lockout_window + 1


def test_login_does_not_follow_next_off_site(
    web: FlaskClient, people: People, clock: Clock
) -> None:
    alice = people("alice")
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        token = csrf_token(web, "/login")
        response = web.post(
            "/login?next=" + target,
            data={
                "csrf_token": token,
                "username": "alice",
                "password": PASSWORD,
                "code": alice.code(clock),
            },
        )
        clock.advance()
        assert response.location == "/"


def test_idle_session_ends(web: FlaskClient, alice: Person) -> None:
    with web.session_transaction() as session:
        session["seen_at"] = int(time.time()) - 31 * 60

    assert web.get("/").status_code == 302


def test_logout_ends_the_session(web: FlaskClient, alice: Person) -> None:
    response = submit(web, "/logout", {}, form_page="/")

    assert response.status_code == 302
    assert web.get("/").status_code == 302


# CSRF


@pytest.mark.parametrize("path", ["/login", "/", "/logout", "/admin/users"])
def test_form_without_csrf_token_is_refused(
    web: FlaskClient, alice: Person, path: str
) -> None:
    response = web.post(path, data={"target": "web01", "reason": "x" * 10})

    assert response.status_code == 400
    assert "reload the page" in text(response)


def test_form_from_another_site_is_refused(web: FlaskClient, alice: Person) -> None:
    token = csrf_token(web, "/")
    response = web.post(
        "/",
        data={"csrf_token": token, "target": "web01", "reason": "cross site"},
        headers={"Referer": "https://evil.example/"},
    )

    assert response.status_code == 400


# The request page


def test_request_gives_certificate_config_known_hosts_and_command(
    web: FlaskClient, alice: Person, web_state: State
) -> None:
    response = ask(web)
    assert response.status_code == 302
    page = text(web.get(response.location))
    block = html.unescape(re.search(r'<pre id="ssh-config">(.*?)</pre>', page, re.S)[1])

    assert "Host jit-bastion\n    HostName bastion.test\n    Port 2222\n" in block
    assert "HostKeyAlias bastion.test" in block
    assert "CertificateFile ~/.ssh/jit/alice-web01-cert.pub" in block
    assert "IdentityFile ~/.ssh/id_ed25519" in block
    assert block.count("IdentitiesOnly yes") == 2
    assert "Host web01\n    User alice\n    ProxyJump jit-bastion\n" in block
    line = web_state.ca.known_hosts_line(web_state.host_names())
    assert html.escape(line) in page
    assert "ssh -F ~/.ssh/jit/web01.conf web01" in page
    assert re.search(r'id="time-left" data-expires="[^"]+">(9|10) min<', page)


def test_certificate_downloads_as_a_file(web: FlaskClient, alice: Person) -> None:
    result = ask(web).location

    download = web.get(result + "/certificate")

    assert download.status_code == 200
    assert "alice-web01-cert.pub" in download.headers["Content-Disposition"]
    assert text(download).startswith("ssh-ed25519-cert-v01@openssh.com ")


def test_uploaded_key_is_used_and_remembered(
    web: FlaskClient, alice: Person, web_state: State
) -> None:
    key = public_key_line("ecdsa")
    upload = (io.BytesIO(key.encode()), "id_ecdsa.pub")

    response = ask(web, public_key="", key_file=upload)

    assert response.status_code == 302
    assert identity.read_public_key(web_state.engine, "alice") == key
    assert key in html.unescape(text(web.get("/")))


BAD_REQUESTS = {
    "empty reason": ({"reason": ""}, 400, "3 to 500 characters"),
    "long reason": ({"reason": "x" * 501}, 400, "3 to 500 characters"),
    "control characters": ({"reason": "fix\x1b[31m"}, 400, "control characters"),
    "two lines": ({"reason": "line one\nline two"}, 400, "one line"),
    "duration over max": ({"duration": "9h"}, 403, "longer than the 8h allowed"),
    "not a duration": ({"duration": "soon"}, 400, "is not a duration"),
    "garbage key": ({"public_key": "ssh-ed25519 AAAAgarbage"}, 400, "not an OpenSSH"),
    "rsa 1024": (
        {"public_key": public_key_line("rsa", 1024)},
        400,
        "at least 3072 bits, this one has 1024",
    ),
    "unknown target": ({"target": "db99"}, 404, "unknown target 'db99'"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_request_is_refused_with_a_message(
    web: FlaskClient, alice: Person, web_state: State, case: str
) -> None:
    fields, status, message = BAD_REQUESTS[case]

    response = ask(web, **fields)

    assert response.status_code == status
    assert message in html.unescape(text(response))
    with web_state.engine.connect() as connection:
        assert connection.execute(sa.select(certificates)).first() is None


def test_pasted_private_key_is_refused_never_echoed_or_kept(
    web: FlaskClient,
    alice: Person,
    web_state: State,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_key = private_text(private_key())
    body = secret_key.splitlines()[1]

    response = ask(web, public_key=secret_key)

    assert response.status_code == 400
    assert "that is a private key" in text(response)
    assert body not in text(response)
    assert body not in caplog.text
    assert identity.read_public_key(web_state.engine, "alice") == ""
    assert all(body not in str(e) for e in audit.read_events(web_state.engine))


def test_target_the_user_may_not_reach_is_refused_and_not_listed(
    web: FlaskClient, people: People, clock: Clock, web_state: State
) -> None:
    from appliance.inventory import add_static_target

    add_static_target(web_state.engine, "db01", "192.0.2.11", 22)
    object.__setattr__(
        web_state.config,
        "policy",
        ({"groups": ["dba"], "targets": ["db01"]}, {"targets": ["web01"]}),
    )
    log_in(web, people("alice"), clock)

    page = text(web.get("/"))
    response = ask(web, target="db01")

    assert '<option value="web01">' in page and "db01" not in page
    assert response.status_code == 403
    assert "no policy rule lets 'alice' reach 'db01'" in html.unescape(text(response))


def test_html_in_reason_and_target_is_shown_escaped(
    web: FlaskClient, alice: Person
) -> None:
    reason = "<script>alert(1)</script> & <b>bold</b>"
    result = ask(web, reason=reason).location
    bad_target = ask(web, target="<img src=x onerror=alert(2)>")

    for body in (text(web.get(result)), text(web.get("/mine"))):
        assert "<script>alert(1)" not in body
        assert html.escape(reason) in body
    assert "<img src=x" not in text(bad_target)
    assert "&lt;img src=x onerror=alert(2)&gt;" in text(bad_target)


def test_another_persons_request_is_not_shown(
    web: FlaskClient, alice: Person, people: People, clock: Clock, app: object
) -> None:
    result = ask(web).location
    submit(web, "/logout", {}, form_page="/")
    log_in(web, people("bob"), clock)

    assert web.get(result).status_code == 404
    assert web.get(result + "/certificate").status_code == 404


def test_my_requests_shows_active_expired_and_revoked(
    web: FlaskClient, alice: Person, web_state: State
) -> None:
    serials = [_issue_serial(web, web_state, reason=f"job {n}") for n in range(3)]
    from appliance import access

    access.revoke(web_state, serials[1], by="tester")
    with web_state.engine.begin() as connection:
        connection.execute(
            sa.update(certificates)
            .where(certificates.c.serial == serials[2])
            .values(valid_before=datetime.now(UTC) - timedelta(minutes=1))
        )

    page = text(web.get("/mine"))

    states = re.findall(r'class="state-(\w+)">', page)
    assert sorted(states) == ["active", "expired", "revoked"]


def _issue_serial(web: FlaskClient, state: State, **fields: object) -> int:
    location = ask(web, **fields).location
    request_id = location.rsplit("/", 1)[1]
    with state.engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(certificates.c.serial).where(
                    certificates.c.request_id == request_id
                )
            ).scalar_one()
        )


# Admin pages


ADMIN_PAGES = ["/admin/users", "/admin/grants", "/admin/audit"]


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_admin_page_is_refused_to_a_plain_user(
    web: FlaskClient, people: People, clock: Clock, path: str
) -> None:
    # The name says admin; the role does not.
    log_in(web, people("admin"), clock)

    assert web.get(path).status_code == 403


def test_admin_actions_are_refused_to_a_plain_user(
    web: FlaskClient, alice: Person, web_state: State
) -> None:
    serial = _issue_serial(web, web_state)
    token = csrf_token(web, "/")

    for path in (
        f"/admin/grants/{serial}/revoke",
        "/admin/users/alice/disable",
        "/admin/users/alice/reset",
    ):
        assert web.post(path, data={"csrf_token": token}).status_code == 403
    assert (
        web.post("/admin/users", data={"csrf_token": token, "name": "eve"}).status_code
        == 403
    )


@pytest.fixture
def admin(people: People, web: FlaskClient, clock: Clock) -> Person:
    """An admin (by role), logged in on ``web``."""
    person = people("carol", role="admin")
    log_in(web, person, clock)
    return person


def test_admin_invites_a_user_with_a_working_link(
    web: FlaskClient, admin: Person
) -> None:
    response = submit(
        web, "/admin/users", {"name": "dave", "groups": "ops, web"}, "/admin/users"
    )

    link = re.search(r'id="invitation"[^>]*>(https://[^<]+)<', text(response))[1]
    assert "https://bastion.test:8443/enroll/" in link
    path = link.removeprefix("https://bastion.test:8443")
    assert web.get(path).status_code == 200
    assert "dave" in text(web.get("/admin/users"))


def test_admin_disables_a_user_and_ends_their_session(
    app: object, web: FlaskClient, admin: Person, people: People, clock: Clock
) -> None:
    bob = people("bob")
    other = web.application.test_client()
    other.environ_base.update(web.environ_base)
    first = log_in(other, bob, clock)
    assert first.status_code == 302, first.get_data(as_text=True)[-600:]
    assert other.get("/").status_code == 200

    submit(web, "/admin/users/bob/disable", {}, "/admin/users")

    assert other.get("/").status_code == 302


def test_admin_resets_totp_with_a_new_invitation(
    web: FlaskClient, admin: Person, people: People, clock: Clock, web_state: State
) -> None:
    bob = people("bob")

    response = submit(web, "/admin/users/bob/reset", {}, "/admin/users")

    assert "/enroll/" in text(response)
    with pytest.raises(identity.AuthFailed):
        identity.authenticate(
            web_state,
            "bob",
            identity.Secret(PASSWORD),
            identity.Secret(bob.code(clock)),
            address="192.0.2.1",
            via="test",
        )


def test_admin_revokes_an_active_grant(
    web: FlaskClient, admin: Person, web_state: State
) -> None:
    serial = _issue_serial(web, web_state, reason="admin needs a look")
    grants = text(web.get("/admin/grants"))
    assert f"<td>{serial}</td>" in grants

    response = submit(
        web, f"/admin/grants/{serial}/revoke", {"reason": "done"}, "/admin/grants"
    )

    assert response.status_code == 302
    with web_state.engine.connect() as connection:
        revoked = connection.execute(sa.select(revocations)).one()
    assert (revoked.serial, revoked.revoked_by, revoked.reason) == (
        serial,
        "carol",
        "done",
    )
    assert f"<td>{serial}</td>" not in text(web.get("/admin/grants"))


def test_audit_trail_filters_by_kind_actor_and_target(
    web: FlaskClient, admin: Person, web_state: State
) -> None:
    _issue_serial(web, web_state)

    issued = text(web.get("/admin/audit?kind=certificate.issued"))
    by_actor = text(web.get("/admin/audit?actor=nobody"))

    assert issued.count("<td>certificate.issued</td>") == 1
    assert "<td>login.succeeded</td>" not in issued
    assert "<td>" not in by_actor.split("<tbody>")[1]


def test_admin_cannot_disable_themself(web: FlaskClient, admin: Person) -> None:
    response = submit(web, "/admin/users/carol/disable", {}, "/admin/users")

    assert response.status_code == 400


# Proxies


def test_forwarded_for_is_ignored_from_an_untrusted_peer(
    web: FlaskClient, alice: Person, web_state: State
) -> None:
    token = csrf_token(web, "/")
    web.post(
        "/",
        data={
            "csrf_token": token,
            "target": "web01",
            "reason": "via a fake proxy",
            "duration": "5m",
            "public_key": public_key_line(),
        },
        headers={"X-Forwarded-For": "203.0.113.66"},
    )

    event = audit.read_events(web_state.engine, kind="certificate.issued")[0]
    assert event["source"] == "198.51.100.7"


def test_forwarded_for_is_believed_from_a_trusted_proxy(
    web_state: State, people: People, clock: Clock
) -> None:
    from webui import create_app

    object.__setattr__(web_state.config.web, "trusted_proxies", ("198.51.100.0/24",))
    app = create_app(web_state)
    proxied = app.test_client()
    proxied.environ_base.update(
        REMOTE_ADDR="198.51.100.7", HTTP_REFERER="https://localhost/"
    )
    alice = people("alice")
    token = csrf_token(proxied, "/login")
    proxied.post(
        "/login",
        data={
            "csrf_token": token,
            "username": "alice",
            "password": PASSWORD,
            "code": alice.code(clock),
        },
        headers={"X-Forwarded-For": "203.0.113.66", "X-Forwarded-Proto": "https"},
    )

    event = audit.read_events(web_state.engine, kind="login.succeeded")[0]
    assert event["source"] == "203.0.113.66"


# Secrets stay out of logs


def test_password_code_secret_and_key_never_reach_logs_or_pages(
    web: FlaskClient,
    web_state: State,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    path = enroll_page(web, web_state, "erin")
    secret = secret_on(web.get(path)).replace(" ", "")
    codes = [pyotp.TOTP(secret).at(clock() + 30 * n) for n in range(3)]
    done = submit(
        web, path, {"password": PASSWORD, "confirm": PASSWORD, "code": codes[0]}
    )
    recovery = re.findall(r"<code>([a-z2-7]{5}-[a-z2-7]{5})</code>", text(done))
    clock.advance()
    submit(
        web,
        "/login",
        {"username": "erin", "password": "wrong password", "code": codes[1]},
    )
    submit(web, "/login", {"username": "erin", "password": PASSWORD, "code": codes[1]})
    private = private_text(private_key())
    ask(web, public_key=private)
    result = web.get(ask(web).location)
    assert result.status_code == 200

    token = path.rsplit("/", 1)[1]
    secrets = [PASSWORD, secret, token, *codes[:2], *recovery, private.splitlines()[1]]
    trail = "\n".join(str(e) for e in audit.read_events(web_state.engine, limit=500))
    for value in secrets:
        assert value not in caplog.text
        assert value not in trail
    with web_state.engine.connect() as connection:
        row = connection.execute(sa.select(users).where(users.c.name == "erin")).one()
    assert secret not in str(tuple(row))


# The command line and gunicorn


def test_user_add_prints_a_one_time_invitation_link(
    web: FlaskClient, web_state: State
) -> None:
    result = jit_bastion(web_state, "user", "add", "frank", "--groups", "ops")

    link = result.stdout.strip().splitlines()[-1]
    assert link.startswith("https://bastion.test:8443/enroll/")
    path = link.removeprefix("https://bastion.test:8443")
    assert "Welcome, frank" in text(web.get(path))


def test_gunicorn_serves_https_unless_trusted_proxies_are_named(
    web_state: State,
) -> None:
    from webui.server import gunicorn_settings

    direct = gunicorn_settings(web_state)
    object.__setattr__(web_state.config.web, "trusted_proxies", ("10.0.0.5",))
    proxied = gunicorn_settings(web_state)

    assert direct["certfile"].endswith("web/tls.crt")
    assert direct["forwarded_allow_ips"] == ""
    assert "certfile" not in proxied
    assert proxied["forwarded_allow_ips"] == "10.0.0.5"
    assert direct["secure_scheme_headers"] == proxied["secure_scheme_headers"] == {}
