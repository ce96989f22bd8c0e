"""People: user accounts, their roles and groups.

Passwords, TOTP and lockouts build on these rows (see the web UI);
admin rights come from the ``role`` column, never from a login name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .errors import InputError, NotFound
from .names import check_login_name
from .store import users

ROLES = ("user", "admin")


@dataclass(frozen=True)
class User:
    """A person who may ask for access."""

    id: int
    name: str
    role: str
    groups: tuple[str, ...]
    disabled: bool

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
                created_at=datetime.now(UTC),
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
