"""The store: SQLAlchemy Core tables and the engine that holds them.

SQLite in WAL mode is the embedded default; a PostgreSQL URL gives the
shared mode in which several appliances share users, grants, replay
counters, lockouts, revocations and the audit chain. The schema is
created and changed only by the Alembic migrations in ``migrations/``;
:func:`upgrade` runs them.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

logger = logging.getLogger(__name__)

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False, server_default="user"),
    sa.Column("groups", sa.Text, nullable=False, server_default=""),
    sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("password_hash", sa.Text),
    sa.Column("totp_secret", sa.Text),
    sa.Column("totp_active", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("totp_last_step", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("public_key", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

invitations = sa.Table(
    "invitations",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.ForeignKey("users.id"), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True)),
)

recovery_codes = sa.Table(
    "recovery_codes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.ForeignKey("users.id"), nullable=False),
    sa.Column("code_hash", sa.Text, nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True)),
)

# One row per lockout key: "user:alice" or "addr:192.0.2.7".
lockouts = sa.Table(
    "lockouts",
    metadata,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("first_failure_at", sa.DateTime(timezone=True)),
    sa.Column("locked_until", sa.DateTime(timezone=True)),
)

targets = sa.Table(
    "targets",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("port", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

access_requests = sa.Table(
    "access_requests",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("user_name", sa.String(64), nullable=False, index=True),
    sa.Column("target", sa.String(128), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("ttl", sa.Integer, nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("logins", sa.Text, nullable=False),
    sa.Column("ports", sa.Text, nullable=False),
    sa.Column("may_start", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("serial", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("request_id", sa.ForeignKey("access_requests.id"), nullable=False),
    sa.Column("user_name", sa.String(64), nullable=False, index=True),
    sa.Column("key_id", sa.String(200), nullable=False),
    sa.Column("principals", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.String(100), nullable=False),
    sa.Column("valid_after", sa.DateTime(timezone=True), nullable=False),
    sa.Column("valid_before", sa.DateTime(timezone=True), nullable=False),
    sa.Column("certificate", sa.Text, nullable=False),
)

revocations = sa.Table(
    "revocations",
    metadata,
    sa.Column("serial", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_by", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.String(32), nullable=False, index=True),
    sa.Column("kind", sa.String(48), nullable=False, index=True),
    sa.Column("actor", sa.String(64), index=True),
    sa.Column("target", sa.String(128), index=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# A single row (id 1) holding the chain's head: taking its row lock is
# what serialises appends across processes and replicas.
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)


def database_url(configured: str, state: Path) -> str:
    """Return the configured URL, or SQLite in the state directory."""
    if configured:
        return configured

    return f"sqlite:///{state / 'jit-bastion.db'}"


def create_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and foreign keys."""
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = sa.create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _configure_sqlite)

    return engine


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """Turn on WAL and foreign keys on every new SQLite connection."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    location = resources.files(__package__) / "migrations"
    alembic_config = AlembicConfig()
    alembic_config.set_main_option("script_location", str(location))
    with engine.begin() as connection:
        alembic_config.attributes["connection"] = connection
        command.upgrade(alembic_config, "head")


def current_revision(engine: Engine) -> str | None:
    """Return the schema's migration revision, or None when there is none."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
