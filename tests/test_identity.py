"""Accounts, passwords, TOTP, invitations, recovery codes and lockouts."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyotp
import pytest
import sqlalchemy as sa

from appliance import identity
from appliance.errors import AuthFailed, InputError, NotFound
from appliance.secret import Secret
from appliance.state import State
from appliance.store import invitations, lockouts, recovery_codes, users
from tests.web.people import PASSWORD, Clock, Person, jit_bastion

pytest_plugins = ["tests.web.fixtures"]

ADDRESS = "198.51.100.7"


def login(
    state: State, person: Person, code: str, address: str = ADDRESS, password: str = ""
) -> identity.User:
    """Log in through the core, as the web form and the API do."""
    return identity.authenticate(
        state,
        person.name,
        Secret(password or person.password),
        Secret(code),
        address=address,
        via="test",
    )


def test_password_is_stored_as_argon2id(
    web_state: State, people: Callable[..., Person]
) -> None:
    alice = people("alice")

    stored = _stored(web_state, users.c.password_hash, alice.name)

    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


def _stored(state: State, column: sa.Column[Any], name: str) -> Any:
    """One column of one user's row, as stored."""
    with state.engine.connect() as connection:
        return connection.execute(
            sa.select(column).where(users.c.name == name)
        ).scalar_one()


def test_password_shorter_than_twelve_is_refused() -> None:
    with pytest.raises(InputError, match="at least 12 characters"):
        identity.hash_password(Secret("elevenchars"))


def test_totp_secret_is_encrypted_at_rest(
    web_state: State, people: Callable[..., Person]
) -> None:
    alice = people("alice")

    sealed = _stored(web_state, users.c.totp_secret, alice.name)

    assert alice.secret not in sealed
    cipher = identity.read_totp_key(web_state.totp_key_path)
    assert cipher.decrypt(sealed.encode()).decode() == alice.secret
    assert web_state.totp_key_path.stat().st_mode & 0o777 == 0o600


def test_enrollment_code_counts_as_used(web_state: State, clock: Clock) -> None:
    identity.add_user(web_state.engine, "alice")
    token = identity.invite(web_state, "alice")
    secret = identity.open_invitation(web_state, token).secret.reveal()
    code = pyotp.TOTP(secret).at(clock())
    identity.enroll(web_state, token, Secret(PASSWORD), Secret(code))
    alice = Person("alice", PASSWORD, secret, [])

    with pytest.raises(AuthFailed):
        login(web_state, alice, code)


def test_code_one_step_either_side_is_accepted(
    web_state: State, people: Callable[..., Person], clock: Clock
) -> None:
    alice = people("alice")
    clock.advance()  # the step before now must be newer than the enrollment's

    login(web_state, alice, alice.code(clock, -1))
    login(web_state, alice, alice.code(clock, 0))
    login(web_state, alice, alice.code(clock, +1))


def test_same_code_twice_within_a_step_is_refused(
    web_state: State, people: Callable[..., Person], clock: Clock
) -> None:
    alice = people("alice")
    code = alice.code(clock)
    login(web_state, alice, code)

    with pytest.raises(AuthFailed) as refused:
        login(web_state, alice, code)

    assert str(refused.value) == identity.LOGIN_FAILED


def test_older_code_after_a_newer_one_is_refused(
    web_state: State, people: Callable[..., Person], clock: Clock
) -> None:
    alice = people("alice")
    login(web_state, alice, alice.code(clock, 0))

    with pytest.raises(AuthFailed):
        login(web_state, alice, alice.code(clock, -1))


def test_code_two_steps_old_is_refused(
    web_state: State, people: Callable[..., Person], clock: Clock
) -> None:
    alice = people("alice")

    with pytest.raises(AuthFailed):
        login(web_state, alice, alice.code(clock, -2))


def test_wrong_password_and_wrong_code_fail_alike(
    web_state: State, people: Callable[..., Person], clock: Clock
) -> None:
    alice = people("alice")

    with pytest.raises(AuthFailed) as bad_password:
        login(web_state, alice, alice.code(clock), password="not the password")
    with pytest.raises(AuthFailed) as bad_code:
        login(web_state, alice, "000000" if alice.code(clock) != "000000" else "1")
    with pytest.raises(AuthFailed) as unknown:
        login(web_state, Person("mallory", PASSWORD, alice.secret, []), "123456")

    assert str(bad_password.value) == str(bad_code.value) == str(unknown.value)
    outcomes = [e["outcome"] for e in _events(web_state, "login.failed")]
    assert outcomes == ["unknown_user", "bad_code", "bad_password"]


class CountingHasher:
    """Wraps the password hasher and counts its checks."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.checks = 0

    def verify(self, stored: str, password: str) -> bool:
        self.checks += 1
        return bool(self.inner.verify(stored, password))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_unknown_user_spends_a_hash_check_as_a_known_one_does(
    web_state: State,
    people: Callable[..., Person],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice = people("alice")
    hasher = CountingHasher(identity._hasher)
    monkeypatch.setattr(identity, "_hasher", hasher)
    identity._dummy_hash()

    with pytest.raises(AuthFailed):
        login(web_state, Person("nobody", PASSWORD, alice.secret, []), "123456")
    unknown = hasher.checks
    with pytest.raises(AuthFailed):
        login(web_state, alice, alice.code(clock), password="wrong password!")

    assert unknown == 1
    assert hasher.checks - unknown == 1


def test_typed_secret_with_spaces_and_lower_case_is_normalised(
    web_state: State, people: Callable[..., Person], clock: Clock
) -> None:
    alice = people("alice")
    secret = pyotp.random_base32()
    typed = " ".join(secret[i : i + 4] for i in range(0, 32, 4)).lower() + "===="

    normal = identity.import_totp_secret(Secret(typed))
    identity.set_totp_secret(web_state, "alice", normal)

    assert normal.reveal() == secret
    login(web_state, alice, pyotp.TOTP(secret).at(clock()))


def test_garbage_secret_is_refused() -> None:
    with pytest.raises(InputError, match="not a TOTP secret"):
        identity.import_totp_secret(Secret("not base32 at all 1890"))


def test_invitation_is_stored_as_sha256_and_works_once(
    web_state: State, clock: Clock
) -> None:
    identity.add_user(web_state.engine, "alice")
    token = identity.invite(web_state, "alice")
    secret = identity.open_invitation(web_state, token).secret.reveal()
    with web_state.engine.connect() as connection:
        stored = connection.execute(sa.select(invitations.c.token_hash)).scalar_one()
    identity.enroll(
        web_state, token, Secret(PASSWORD), Secret(pyotp.TOTP(secret).at(clock()))
    )
    clock.advance()

    assert token.reveal() not in stored and len(stored) == 64
    with pytest.raises(NotFound, match="used or expired"):
        identity.open_invitation(web_state, token)
    with pytest.raises(NotFound, match="used or expired"):
        identity.enroll(
            web_state, token, Secret(PASSWORD), Secret(pyotp.TOTP(secret).at(clock()))
        )


def test_expired_invitation_is_refused(web_state: State, clock: Clock) -> None:
    identity.add_user(web_state.engine, "alice")
    token = identity.invite(web_state, "alice")
    clock.advance(web_state.config.web.invitation_ttl + 1)

    with pytest.raises(NotFound, match="used or expired"):
        identity.open_invitation(web_state, token)


def test_new_invitation_ends_the_old_one_and_the_old_login(
    web_state: State, people: Callable[..., Person], clock: Clock
) -> None:
    alice = people("alice")
    identity.add_user(web_state.engine, "bob")
    first = identity.invite(web_state, "bob")
    identity.invite(web_state, "bob")
    identity.invite(web_state, "alice")

    with pytest.raises(NotFound):
        identity.open_invitation(web_state, first)
    with pytest.raises(AuthFailed):
        login(web_state, alice, alice.code(clock))


def test_recovery_code_logs_in_once_and_is_stored_hashed(
    web_state: State, people: Callable[..., Person]
) -> None:
    alice = people("alice")
    code = alice.recovery_codes[0]

    login(web_state, alice, code.upper())
    with pytest.raises(AuthFailed):
        login(web_state, alice, code)

    assert len(set(alice.recovery_codes)) == identity.RECOVERY_CODES
    assert identity.count_recovery_codes(web_state.engine, "alice") == 9
    with web_state.engine.connect() as connection:
        stored = connection.execute(sa.select(recovery_codes.c.code_hash)).scalars()
        assert not set(stored) & set(alice.recovery_codes)


def test_disabled_account_cannot_log_in(
    web_state: State, people: Callable[..., Person], clock: Clock
) -> None:
    alice = people("alice")
    identity.set_disabled(web_state.engine, "alice")

    with pytest.raises(AuthFailed):
        login(web_state, alice, alice.code(clock))


def _fail(state: State, person: Person, times: int, address: str = ADDRESS) -> None:
    for _ in range(times):
        with pytest.raises(AuthFailed):
            login(state, person, "000000", address=address, password="wrong password!")


def test_sixth_login_after_five_failures_is_locked_even_when_right(
    web_state: State, people: Callable[..., Person], clock: Clock
) -> None:
    alice = people("alice")
    _fail(web_state, alice, 5)

    with pytest.raises(AuthFailed) as refused:
        login(web_state, alice, alice.code(clock))

    assert str(refused.value) == identity.LOGIN_FAILED
    assert _events(web_state, "login.failed")[0]["outcome"] == "locked"


def test_lockout_ends_after_the_window(
    web_state: State, people: Callable[..., Person], clock: Clock
) -> None:
    alice = people("alice")
    _fail(web_state, alice, 5)
    clock.advance(web_state.config.web.lockout_window + 1)

    login(web_state, alice, alice.code(clock))


def test_lockout_doubles_with_each_failure_after_it(
    web_state: State, people: Callable[..., Person], clock: Clock
) -> None:
    alice = people("alice")
    window = web_state.config.web.lockout_window
    _fail(web_state, alice, 5)
    first = _locked_for(web_state, "user:alice", clock)
    clock.advance(window + 1)
    _fail(web_state, alice, 1)
    second = _locked_for(web_state, "user:alice", clock)

    assert first == pytest.approx(window, abs=1)
    assert second == pytest.approx(2 * window, abs=1)


def test_one_address_is_locked_across_user_names(
    web_state: State, people: Callable[..., Person], clock: Clock
) -> None:
    alice = people("alice")
    for name in ("u1", "u2", "u3", "u4", "u5"):
        _fail(web_state, Person(name, PASSWORD, alice.secret, []), 1)

    with pytest.raises(AuthFailed):
        login(web_state, alice, alice.code(clock))
    login(web_state, alice, alice.code(clock), address="203.0.113.9")


def test_ipv6_addresses_count_by_their_64() -> None:
    assert identity.lockout_keys("a", "2001:db8::1")[1] == "addr:2001:db8::/64"
    assert identity.lockout_keys("a", "192.0.2.1")[1] == "addr:192.0.2.1/32"


def test_good_login_clears_the_user_count_not_the_address_count(
    web_state: State, people: Callable[..., Person], clock: Clock
) -> None:
    alice = people("alice")
    _fail(web_state, alice, 4)
    login(web_state, alice, alice.code(clock))

    assert _failures(web_state, "user:alice") is None
    assert _failures(web_state, f"addr:{ADDRESS}/32") == 4


def test_a_code_is_accepted_once_by_racing_replicas(
    database_url: str | None,
    web_state: State,
    people: Callable[..., Person],
    clock: Clock,
) -> None:
    alice = people("alice")
    code = alice.code(clock)
    replicas = [State.open(web_state.path) for _ in range(4)]
    results = _race(replicas, lambda s: login(s, alice, code))

    assert sorted(results) == ["AuthFailed"] * 3 + ["User"]


def test_failures_racing_on_replicas_are_all_counted(
    database_url: str | None, web_state: State, people: Callable[..., Person]
) -> None:
    alice = people("alice")
    replicas = [State.open(web_state.path) for _ in range(4)]
    _race(
        replicas,
        lambda s: login(s, alice, "000000", password="wrong password!"),
    )

    assert _failures(web_state, "user:alice") == 4


def _race(replicas: list[State], attempt: Callable[[State], object]) -> list[str]:
    """Run ``attempt`` on each replica at once; name each result's type."""
    barrier = threading.Barrier(len(replicas))
    results: list[str] = []

    def run(state: State) -> None:
        barrier.wait()
        try:
            results.append(type(attempt(state)).__name__)
        except AuthFailed:
            results.append("AuthFailed")

    threads = [threading.Thread(target=run, args=(s,)) for s in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for state in replicas:
        state.engine.dispose()
    return results


def _failures(state: State, key: str) -> int | None:
    with state.engine.connect() as connection:
        return connection.execute(
            sa.select(lockouts.c.failures).where(lockouts.c.key == key)
        ).scalar()


def _locked_for(state: State, key: str, clock: Clock) -> float:
    with state.engine.connect() as connection:
        until = connection.execute(
            sa.select(lockouts.c.locked_until).where(lockouts.c.key == key)
        ).scalar_one()
    until = until if until.tzinfo else until.replace(tzinfo=UTC)
    return (until - datetime.fromtimestamp(clock(), UTC)).total_seconds()


def _events(state: State, kind: str) -> list[dict[str, object]]:
    from appliance import audit

    return audit.read_events(state.engine, kind=kind)


def test_cli_set_totp_takes_a_typed_secret_with_spaces_and_lower_case(
    web_state: State, people: Callable[..., Person], clock: Clock
) -> None:
    alice = people("alice")
    secret = pyotp.random_base32()
    typed = " ".join(secret[i : i + 4] for i in range(0, 32, 4)).lower()

    result = jit_bastion(web_state, "user", "set-totp", "alice", stdin=typed + "\n")

    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    login(web_state, alice, pyotp.TOTP(secret).at(clock()))
