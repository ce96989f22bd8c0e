"""People: accounts, passwords, TOTP, invitations, recovery codes, lockouts.

Admin rights come from the ``role`` column, never from a login name.

A person enrolls from a one-time invitation: the link holds a random
token of which only the SHA-256 is stored. Enrolling sets an argon2id
password and activates a TOTP secret (encrypted at rest with a Fernet key
kept in the state directory, outside the database) once one code from it
is confirmed. A login needs the password and a code; every code's time
step is recorded with a conditional update, so no code is accepted twice,
even by replicas sharing a PostgreSQL store. Failures count per user and
per address in ``lockouts``, again with atomic updates, and lock both for
a window that doubles with each further failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import argon2
import pyotp
import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from .config import Config, parse_hostport
from .errors import AuthFailed, ConfigError, InputError, NotFound
from .names import check_login_name
from .secret import Secret
from .store import invitations, lockouts, recovery_codes, users

if TYPE_CHECKING:
    from .state import State

logger = logging.getLogger(__name__)

ROLES = ("user", "admin")
PASSWORD_MIN = 12
PASSWORD_MAX = 1024
RECOVERY_CODES = 10
#: Longest lockout, however many failures pile up.
LOCKOUT_CAP = 24 * 3600
#: The one message a failed login gets, whatever failed.
LOGIN_FAILED = (
    "Login failed: check your user name, password and code. "
    "After repeated failures logins pause for a while."
)

_hasher = argon2.PasswordHasher(type=argon2.Type.ID)
_TOTP_CODE = re.compile(r"\d{6}")
_RECOVERY_CODE = re.compile(r"[a-z2-7]{5}-?[a-z2-7]{5}")
_BASE32 = re.compile(r"[A-Z2-7]+")


def _clock() -> float:
    """Seconds since the epoch: the one clock of logins (tests replace it)."""
    return time.time()


def _now() -> datetime:
    """The time now, aware, in UTC."""
    return datetime.fromtimestamp(_clock(), UTC)


@dataclass(frozen=True)
class User:
    """A person who may ask for access."""

    id: int
    name: str
    role: str
    groups: tuple[str, ...]
    disabled: bool
    enrolled: bool = False

    @property
    def is_admin(self) -> bool:
        """Whether the account holds the admin role."""
        return self.role == "admin"


def _user_from_row(row: sa.Row[tuple[object, ...]]) -> User:
    """Build a :class:`User` from a ``users`` row."""
    mapping = row._mapping
    groups = tuple(g for g in str(mapping["groups"]).split(",") if g)

    return User(
        id=int(mapping["id"]),
        name=str(mapping["name"]),
        role=str(mapping["role"]),
        groups=groups,
        disabled=bool(mapping["disabled"]),
        enrolled=bool(mapping["totp_active"]) and mapping["password_hash"] is not None,
    )


def add_user(
    engine: Engine, name: str, *, role: str = "user", groups: tuple[str, ...] = ()
) -> User:
    """Create an account; its name must be new and a valid login."""
    check_login_name(name)
    if role not in ROLES:
        raise InputError(f"role {role!r} is not one of {', '.join(ROLES)}")
    for group in groups:
        if not group or "," in group:
            raise InputError(f"{group!r} is not a valid group name")
    with engine.begin() as connection:
        if connection.execute(
            sa.select(users.c.id).where(users.c.name == name)
        ).first():
            raise InputError(f"user {name!r} exists already")
        connection.execute(
            sa.insert(users).values(
                name=name,
                role=role,
                groups=",".join(groups),
                created_at=_now(),
            )
        )

    return find_user(engine, name)


def find_user(engine: Engine, name: str) -> User:
    """Return the account called ``name``, or raise NotFound."""
    with engine.connect() as connection:
        row = connection.execute(sa.select(users).where(users.c.name == name)).first()
    if row is None:
        raise NotFound(f"unknown user {name!r}")

    return _user_from_row(row)


def list_users(engine: Engine) -> list[User]:
    """Return every account, by name."""
    with engine.connect() as connection:
        rows = connection.execute(sa.select(users).order_by(users.c.name)).all()

    return [_user_from_row(row) for row in rows]


def set_disabled(engine: Engine, name: str, disabled: bool = True) -> User:
    """Disable or enable an account; a disabled one can neither log in nor ask."""
    with engine.begin() as connection:
        done = connection.execute(
            sa.update(users).where(users.c.name == name).values(disabled=disabled)
        )
    if done.rowcount != 1:
        raise NotFound(f"unknown user {name!r}")

    return find_user(engine, name)


def read_public_key(engine: Engine, name: str) -> str:
    """Return the public key the person last used, or an empty string."""
    with engine.connect() as connection:
        key = connection.execute(
            sa.select(users.c.public_key).where(users.c.name == name)
        ).scalar()

    return str(key or "")


def write_public_key(engine: Engine, name: str, public_key: str) -> None:
    """Remember a public key for the person's next request."""
    with engine.begin() as connection:
        connection.execute(
            sa.update(users).where(users.c.name == name).values(public_key=public_key)
        )


# Passwords


def check_password(password: Secret) -> None:
    """Refuse a password shorter than 12 or longer than 1024 characters."""
    length = len(password.reveal())
    if length < PASSWORD_MIN:
        raise InputError(
            f"the password must have at least {PASSWORD_MIN} characters, "
            f"this one has {length}"
        )
    if length > PASSWORD_MAX:
        raise InputError(f"the password must have at most {PASSWORD_MAX} characters")


def hash_password(password: Secret) -> str:
    """Return the argon2id hash of a password that passes the rules."""
    check_password(password)

    return _hasher.hash(password.reveal())


def _verify_password(stored: str | None, password: Secret) -> bool:
    """Check a password against a hash; spend the same time without one."""
    if stored is None:
        _dummy_verify(password)
        return False
    try:
        return _hasher.verify(stored, password.reveal())
    except argon2.exceptions.VerificationError:
        return False
    except argon2.exceptions.InvalidHashError:
        logger.error("A stored password hash is not an argon2 hash")
        return False


def _dummy_verify(password: Secret) -> None:
    """Spend one hash check, so an unknown user costs as much as a known one."""
    with contextlib.suppress(argon2.exceptions.VerificationError):
        _hasher.verify(_dummy_hash(), password.reveal())


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    """A hash of a random password, made once per process."""
    if not _DUMMY:
        _DUMMY.append(_hasher.hash(secrets.token_urlsafe(24)))

    return _DUMMY[0]


# TOTP


def generate_totp_secret() -> Secret:
    """A new 160-bit base32 TOTP secret."""
    return Secret(pyotp.random_base32())


def import_totp_secret(text: Secret) -> Secret:
    """Normalise a typed base32 secret: no spaces or dashes, upper case, no '='."""
    cleaned = re.sub(r"[\s-]", "", text.reveal()).upper().rstrip("=")
    if len(cleaned) < 16 or not _BASE32.fullmatch(cleaned):
        raise InputError(
            "not a TOTP secret: give the base32 text (letters A-Z and digits "
            "2-7) of at least 16 characters"
        )

    return Secret(cleaned)


def totp_uri(secret: Secret, name: str, issuer: str) -> str:
    """The otpauth:// URI an authenticator app reads from the QR code."""
    return pyotp.TOTP(secret.reveal()).provisioning_uri(
        name=f"{name}@{issuer}", issuer_name=issuer
    )


def read_totp_key(path: Path) -> Fernet:
    """Read the Fernet key that encrypts TOTP secrets at rest."""
    try:
        mode = path.stat().st_mode & 0o777
        key = path.read_bytes().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is missing: the TOTP key is made at init; "
            "restore it from a backup, or run 'jit-bastion serve web' to make "
            "a new one and re-invite everyone"
        ) from None
    if mode & 0o077:
        raise ConfigError(f"{path} has mode {mode:04o}: run chmod 600 {path}")

    return Fernet(key)


def _seal(state: State, secret: Secret) -> str:
    """Encrypt a TOTP secret for the database."""
    cipher = read_totp_key(state.totp_key_path)

    return cipher.encrypt(secret.reveal().encode()).decode()


def _unseal(state: State, sealed: str) -> Secret:
    """Decrypt a TOTP secret read from the database."""
    cipher = read_totp_key(state.totp_key_path)
    try:
        return Secret(cipher.decrypt(sealed.encode()).decode())
    except InvalidToken:
        raise ConfigError(
            "a TOTP secret does not decrypt with the key in "
            f"{state.totp_key_path}: was the key replaced? Re-invite the user"
        ) from None


def _match_code(secret: Secret, code: Secret) -> int | None:
    """Return the time step a code matches, one step either side, or None."""
    totp = pyotp.TOTP(secret.reveal())
    try:
        step = totp.verify_and_get_timecode(
            code.reveal(), for_time=_clock(), valid_window=1
        )
        return int(step)
    except pyotp.exceptions.OTPVerificationError:
        return None


def _spend_step(connection: Connection, user_id: int, step: int) -> bool:
    """Record a used time step; False when it or a later one was used already."""
    done = connection.execute(
        sa.update(users)
        .where(users.c.id == user_id, users.c.totp_last_step < step)
        .values(totp_last_step=step)
    )

    return done.rowcount == 1


def set_totp_secret(state: State, name: str, secret: Secret) -> None:
    """Activate a known TOTP secret for an enrolled person (a migration aid)."""
    sealed = _seal(state, secret)
    with state.engine.begin() as connection:
        done = connection.execute(
            sa.update(users)
            .where(users.c.name == name)
            .values(totp_secret=sealed, totp_active=True, totp_last_step=0)
        )
    if done.rowcount != 1:
        raise NotFound(f"unknown user {name!r}")
    state.auditor.record("user.totp_set", actor="cli", target=name)


# Invitations and enrollment


@dataclass(frozen=True)
class Invitation:
    """An open invitation: whom it is for and the TOTP secret to show."""

    user: User
    secret: Secret
    expires_at: datetime


def _token_hash(token: Secret) -> str:
    """The SHA-256 under which an invitation token is stored."""
    return hashlib.sha256(token.reveal().encode()).hexdigest()


def invite(state: State, name: str, *, by: str = "cli") -> Secret:
    """Start (or restart) a person's enrollment; return the one-time token.

    The account's password and TOTP stop working until the person enrolls
    again, and any earlier invitation of theirs stops working at once.
    """
    user = find_user(state.engine, name)
    token = Secret(secrets.token_urlsafe(32))
    now = _now()
    expires = now + timedelta(seconds=state.config.web.invitation_ttl)
    with state.engine.begin() as connection:
        connection.execute(
            sa.delete(invitations).where(invitations.c.user_id == user.id)
        )
        connection.execute(
            sa.update(users)
            .where(users.c.id == user.id)
            .values(
                password_hash=None,
                totp_secret=_seal(state, generate_totp_secret()),
                totp_active=False,
            )
        )
        connection.execute(
            sa.insert(invitations).values(
                token_hash=_token_hash(token),
                user_id=user.id,
                created_at=now,
                expires_at=expires,
            )
        )
    state.auditor.record(
        "user.invited", actor=by, target=name, expires=expires.isoformat()
    )

    return token


def invitation_link(config: Config, token: Secret) -> str:
    """The URL a person opens to enroll: web.public_url, else the name and port."""
    base = config.web.public_url.rstrip("/")
    if not base:
        _, port = parse_hostport(config.web.listen, 8443)
        base = f"https://{config.appliance.name}:{port}"

    return f"{base}/enroll/{quote(token.reveal(), safe='')}"


def open_invitation(state: State, token: Secret) -> Invitation:
    """Return the open invitation for ``token``, or raise NotFound."""
    now = _now()
    query = (
        sa.select(users, invitations.c.expires_at)
        .join(invitations, invitations.c.user_id == users.c.id)
        .where(
            invitations.c.token_hash == _token_hash(token),
            invitations.c.used_at.is_(None),
            invitations.c.expires_at > now,
        )
    )
    with state.engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None or row.totp_secret is None:
        raise NotFound(
            "this invitation link is used or expired: ask an admin for a new one"
        )

    expires = row.expires_at
    if expires.tzinfo is None:  # SQLite hands back naive UTC
        expires = expires.replace(tzinfo=UTC)

    return Invitation(_user_from_row(row), _unseal(state, row.totp_secret), expires)


def enroll(state: State, token: Secret, password: Secret, code: Secret) -> list[Secret]:
    """Set the password and activate TOTP; return ten one-time recovery codes.

    The invitation is spent with a conditional update, so two requests
    racing with the same link cannot both enroll; the confirming code's
    time step counts as used.
    """
    invitation = open_invitation(state, token)
    password_hash = hash_password(password)
    step = _match_code(invitation.secret, code)
    if step is None:
        raise InputError(
            "that code does not match: check the clock of the device and "
            "type the code the app shows now"
        )
    codes = [_generate_recovery_code() for _ in range(RECOVERY_CODES)]
    with state.engine.begin() as connection:
        _spend_invitation(connection, token)
        _activate(connection, invitation.user.id, password_hash, step)
        _store_recovery_codes(connection, invitation.user.id, codes)
    state.auditor.record(
        "user.enrolled", actor=invitation.user.name, outcome="enrolled"
    )
    logger.info("User %r enrolled a password and TOTP", invitation.user.name)

    return codes


def _spend_invitation(connection: Connection, token: Secret) -> None:
    """Mark an invitation used, once; raise NotFound if it is spent or old."""
    now = _now()
    done = connection.execute(
        sa.update(invitations)
        .where(
            invitations.c.token_hash == _token_hash(token),
            invitations.c.used_at.is_(None),
            invitations.c.expires_at > now,
        )
        .values(used_at=now)
    )
    if done.rowcount != 1:
        raise NotFound(
            "this invitation link is used or expired: ask an admin for a new one"
        )


def _activate(
    connection: Connection, user_id: int, password_hash: str, step: int
) -> None:
    """Store the password and turn TOTP on with ``step`` already used."""
    connection.execute(
        sa.update(users)
        .where(users.c.id == user_id)
        .values(password_hash=password_hash, totp_active=True, totp_last_step=step)
    )


# Recovery codes


def _generate_recovery_code() -> Secret:
    """A random code such as ``k3j9q-7xw2m`` (50 bits)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    text = "".join(secrets.choice(alphabet) for _ in range(10))

    return Secret(f"{text[:5]}-{text[5:]}")


def _recovery_hash(code: Secret) -> str:
    """The SHA-256 under which a recovery code is stored (50 random bits)."""
    normal = code.reveal().strip().lower().replace("-", "")

    return hashlib.sha256(normal.encode()).hexdigest()


def _store_recovery_codes(
    connection: Connection, user_id: int, codes: list[Secret]
) -> None:
    """Replace a user's recovery codes with the hashes of ``codes``."""
    connection.execute(
        sa.delete(recovery_codes).where(recovery_codes.c.user_id == user_id)
    )
    connection.execute(
        sa.insert(recovery_codes),
        [{"user_id": user_id, "code_hash": _recovery_hash(c)} for c in codes],
    )


def _spend_recovery_code(connection: Connection, user_id: int, code: Secret) -> bool:
    """Use up one unused recovery code; False when it is not one."""
    done = connection.execute(
        sa.update(recovery_codes)
        .where(
            recovery_codes.c.user_id == user_id,
            recovery_codes.c.code_hash == _recovery_hash(code),
            recovery_codes.c.used_at.is_(None),
        )
        .values(used_at=_now())
    )

    return done.rowcount == 1


def count_recovery_codes(engine: Engine, name: str) -> int:
    """How many unused recovery codes a person has left."""
    query = (
        sa.select(sa.func.count())
        .select_from(recovery_codes.join(users))
        .where(users.c.name == name, recovery_codes.c.used_at.is_(None))
    )
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


# Login


def authenticate(
    state: State, name: str, password: Secret, code: Secret, *, address: str, via: str
) -> User:
    """Check password and code (or a recovery code); raise AuthFailed.

    Deny by default: an unknown, disabled or unenrolled account, a locked
    user or address, a wrong password, a wrong, old or reused code all
    give the same :data:`LOGIN_FAILED`, after the same hash check.
    """
    keys = lockout_keys(name, address)
    failure = _check_factors(state, name, password, code, keys)
    if failure is None:
        _clear_failures(state.engine, keys[0])
        state.auditor.record(
            "login.succeeded", actor=name, source=address, outcome="ok", via=via
        )
        logger.info("Login of %r from %s via %s", name, address, via)
        return find_user(state.engine, name)
    if failure != "locked":
        record_failures(state, keys)
    state.auditor.record(
        "login.failed", actor=name[:64], source=address, outcome=failure, via=via
    )
    logger.info("Failed login for %r from %s via %s", name[:64], address, via)

    raise AuthFailed(LOGIN_FAILED)


def _check_factors(
    state: State, name: str, password: Secret, code: Secret, keys: tuple[str, str]
) -> str | None:
    """Return None when every factor holds, else a word for the audit trail."""
    row = _login_row(state.engine, name)
    if is_locked(state.engine, keys):
        _dummy_verify(password)
        return "locked"
    if row is None or row.disabled or not row.totp_active:
        _dummy_verify(password)
        return "unknown_user" if row is None else "account_unusable"
    if not _verify_password(row.password_hash, password):
        return "bad_password"
    if not _check_code(state, row, code):
        return "bad_code"
    _rehash_if_needed(state.engine, row, password)

    return None


def _login_row(engine: Engine, name: str) -> sa.Row[tuple[object, ...]] | None:
    """The users row for a login attempt, or None for an unknown name."""
    if len(name) > 64:
        return None
    with engine.connect() as connection:
        return connection.execute(sa.select(users).where(users.c.name == name)).first()


def _check_code(state: State, row: sa.Row[tuple[object, ...]], code: Secret) -> bool:
    """Accept an unused TOTP code or an unused recovery code."""
    text = re.sub(r"\s", "", unicodedata.normalize("NFKC", code.reveal()))
    with state.engine.begin() as connection:
        if _TOTP_CODE.fullmatch(text):
            step = _match_code(_unseal(state, str(row.totp_secret)), Secret(text))
            return step is not None and _spend_step(connection, int(row.id), step)
        if _RECOVERY_CODE.fullmatch(text.lower()):
            return _spend_recovery_code(connection, int(row.id), Secret(text))

    return False


def _rehash_if_needed(
    engine: Engine, row: sa.Row[tuple[object, ...]], password: Secret
) -> None:
    """Store a fresh hash when the argon2 parameters have changed."""
    if _hasher.check_needs_rehash(str(row.password_hash)):
        with engine.begin() as connection:
            connection.execute(
                sa.update(users)
                .where(users.c.id == row.id)
                .values(password_hash=_hasher.hash(password.reveal()))
            )


# Lockouts


def lockout_keys(name: str, address: str) -> tuple[str, str]:
    """The lockout rows a login touches: the user and the address (an
    IPv6 address counts by its /64, the block one host usually holds)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        where = address[:100]
    else:
        prefix = 64 if ip.version == 6 else 32
        where = str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))

    return f"user:{name[:64]}", f"addr:{where}"


def is_locked(engine: Engine, keys: tuple[str, ...]) -> bool:
    """Whether any of the lockout ``keys`` is locked now (the bastion asks too)."""
    query = sa.select(lockouts.c.key).where(
        lockouts.c.key.in_(keys), lockouts.c.locked_until > _now()
    )
    with engine.connect() as connection:
        return connection.execute(query).first() is not None


def record_failures(state: State, keys: tuple[str, ...]) -> None:
    """Count one failure against each lockout key; lock those over the limit."""
    web = state.config.web
    with state.engine.begin() as connection:
        for key in keys:
            _record_failure(connection, key, web.lockout_failures, web.lockout_window)


def _record_failure(connection: Connection, key: str, limit: int, window: int) -> None:
    """Count a failure in one atomic update; lock with a doubling backoff.

    The count restarts when the last failure and the last lock are both
    older than the window; otherwise each failure past ``limit`` doubles
    the lock, up to :data:`LOCKOUT_CAP`.
    """
    now = _now()
    stale = now - timedelta(seconds=window)
    _insert_missing(connection, key)
    recent = sa.or_(
        lockouts.c.first_failure_at >= stale, lockouts.c.locked_until >= stale
    )
    failures = connection.execute(
        sa.update(lockouts)
        .where(lockouts.c.key == key)
        .values(
            failures=sa.case((recent, lockouts.c.failures + 1), else_=1),
            first_failure_at=sa.case((recent, lockouts.c.first_failure_at), else_=now),
        )
        .returning(lockouts.c.failures)
    ).scalar_one()
    if failures >= limit:
        seconds = min(window * 2 ** (failures - limit), LOCKOUT_CAP)
        _extend_lock(connection, key, now + timedelta(seconds=seconds))
        logger.warning("Locked %s after %d failed logins", key, failures)


def _insert_missing(connection: Connection, key: str) -> None:
    """Create the lockout row for ``key`` unless it exists (race-free)."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    connection.execute(
        dialect.insert(lockouts).values(key=key, failures=0).on_conflict_do_nothing()
    )


def _extend_lock(connection: Connection, key: str, until: datetime) -> None:
    """Set ``locked_until`` unless a racing failure set a later one."""
    connection.execute(
        sa.update(lockouts)
        .where(
            lockouts.c.key == key,
            sa.or_(lockouts.c.locked_until.is_(None), lockouts.c.locked_until < until),
        )
        .values(locked_until=until)
    )


# Old private names, until the bastion calls the public ones.
_locked = is_locked
_record_failures = record_failures


def _clear_failures(engine: Engine, key: str) -> None:
    """Forget a user's failures after a good login (not the address's)."""
    with engine.begin() as connection:
        connection.execute(sa.delete(lockouts).where(lockouts.c.key == key))
