"""The initial schema: users, targets, requests, certificates, audit.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create every table of the first release."""
    op.create_table(
        "users",
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
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "invitations",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("used_at", TZ),
    )
    op.create_table(
        "recovery_codes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("code_hash", sa.Text, nullable=False),
        sa.Column("used_at", TZ),
    )
    op.create_table(
        "lockouts",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("first_failure_at", TZ),
        sa.Column("locked_until", TZ),
    )
    op.create_table(
        "targets",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    _create_access_tables()
    _create_audit_tables()


def _create_access_tables() -> None:
    """Requests, the certificates issued for them, and revocations."""
    op.create_table(
        "access_requests",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_name", sa.String(64), nullable=False, index=True),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("ttl", sa.Integer, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("logins", sa.Text, nullable=False),
        sa.Column("ports", sa.Text, nullable=False),
        sa.Column("may_start", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "certificates",
        sa.Column("serial", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column(
            "request_id",
            sa.String(32),
            sa.ForeignKey("access_requests.id"),
            nullable=False,
        ),
        sa.Column("user_name", sa.String(64), nullable=False, index=True),
        sa.Column("key_id", sa.String(200), nullable=False),
        sa.Column("principals", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.String(100), nullable=False),
        sa.Column("valid_after", TZ, nullable=False),
        sa.Column("valid_before", TZ, nullable=False),
        sa.Column("certificate", sa.Text, nullable=False),
    )
    op.create_table(
        "revocations",
        sa.Column("serial", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("revoked_at", TZ, nullable=False),
        sa.Column("revoked_by", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
    )


def _create_audit_tables() -> None:
    """The hash-chained events and the single-row chain head."""
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.String(32), nullable=False, index=True),
        sa.Column("kind", sa.String(48), nullable=False, index=True),
        sa.Column("actor", sa.String(64), index=True),
        sa.Column("target", sa.String(128), index=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(
        sa.table(
            "audit_head",
            sa.column("id", sa.Integer),
            sa.column("seq", sa.BigInteger),
            sa.column("hash", sa.String),
        ),
        [{"id": 1, "seq": 0, "hash": "0" * 64}],
    )
