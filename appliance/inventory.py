"""Targets: the hosts a grant may reach, looked up by name.

This module holds static targets, registered by an operator with
``jit-bastion target add``. Proxmox guests join them through
:mod:`appliance.guests`. Whatever the source, the bastion connects only
to the address that the inventory gives for a granted target's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .errors import InputError, NotFound
from .names import check_target_name
from .store import targets


@dataclass(frozen=True)
class Target:
    """A host people may be granted: its name and where it listens."""

    name: str
    host: str
    port: int = 22
    kind: str = "static"
    node: str | None = None
    vmid: int | None = None
    tags: tuple[str, ...] = ()
    pool: str | None = None
    status: str = "running"


def add_static_target(engine: Engine, name: str, host: str, port: int) -> Target:
    """Register a static target; its name must be new."""
    check_target_name(name)
    if not host or any(c.isspace() for c in host):
        raise InputError(f"{host!r} is not a host name or address")
    if not 0 < port < 65536:
        raise InputError(f"{port!r} is not a TCP port")
    with engine.begin() as connection:
        existing = connection.execute(
            sa.select(targets.c.name).where(targets.c.name == name)
        ).first()
        if existing:
            raise InputError(f"target {name!r} exists already")
        connection.execute(
            sa.insert(targets).values(
                name=name, host=host, port=port, created_at=datetime.now(UTC)
            )
        )

    return Target(name, host, port)


def list_static_targets(engine: Engine) -> list[Target]:
    """Return every static target, by name."""
    with engine.connect() as connection:
        rows = connection.execute(sa.select(targets).order_by(targets.c.name)).all()

    return [Target(row.name, row.host, row.port) for row in rows]


def find_static_target(engine: Engine, name: str) -> Target:
    """Return the static target called ``name``, or raise NotFound."""
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(targets).where(targets.c.name == name)
        ).first()
    if row is None:
        raise NotFound(f"unknown target {name!r}")

    return Target(row.name, row.host, row.port)
