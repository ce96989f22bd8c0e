"""Admin pages: users, active grants, the audit trail.

Every view here requires the admin role from the account's row; a login
name confers nothing (deny by default).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from appliance import access, identity
from appliance.errors import BastionError, InputError
from appliance.store import audit_events

from . import guard
from .forms import InviteForm, RevokeForm
from .grants import list_records

logger = logging.getLogger(__name__)

blueprint = Blueprint("admin", __name__, url_prefix="/admin")


def _users_page(
    form: InviteForm, link: str | None = None, error: str | None = None
) -> ResponseReturnValue:
    """Render the users page, with a fresh invitation link if there is one."""
    users = identity.list_users(guard.current_state().engine)
    status = 400 if error else 200

    return render_template(
        "admin/users.html", users=users, form=form, link=link, error=error
    ), status


@blueprint.get("/users")
@guard.admin_required
def users() -> ResponseReturnValue:
    """Every account, and the form to invite one."""
    return _users_page(InviteForm())


@blueprint.post("/users")
@guard.admin_required
def invite() -> ResponseReturnValue:
    """Create an account and show its one-time invitation link."""
    form = InviteForm()
    if not form.validate_on_submit():
        return _users_page(form, error="Give a user name.")
    state = guard.current_state()
    admin = guard.user().name
    groups = tuple(g.strip() for g in (form.groups.data or "").split(",") if g.strip())
    role = "admin" if form.admin.data else "user"
    try:
        user = identity.add_user(state.engine, form.name.data, role=role, groups=groups)
    except BastionError as exc:
        return _users_page(form, error=str(exc))
    state.auditor.record("user.added", actor=admin, target=user.name, role=role)

    return _users_page(InviteForm(formdata=None), link=_invite(user.name))


def _invite(name: str) -> str:
    """Issue an invitation for ``name`` and return its link."""
    state = guard.current_state()
    token = identity.invite(state, name, by=guard.user().name)

    return identity.invitation_link(state.config, token)


@blueprint.post("/users/<name>/disable")
@guard.admin_required
def disable(name: str) -> ResponseReturnValue:
    """Disable an account: no logins, no certificates."""
    return _set_disabled(name, True)


@blueprint.post("/users/<name>/enable")
@guard.admin_required
def enable(name: str) -> ResponseReturnValue:
    """Enable an account again."""
    return _set_disabled(name, False)


def _set_disabled(name: str, disabled: bool) -> ResponseReturnValue:
    """Flip ``disabled``, audit it, and go back to the users page."""
    state = guard.current_state()
    admin = guard.user().name
    if name == admin and disabled:
        raise InputError("you cannot disable your own account")
    identity.set_disabled(state.engine, name, disabled)
    kind = "user.disabled" if disabled else "user.enabled"
    state.auditor.record(kind, actor=admin, target=name)
    flash(f"{name} is {'disabled' if disabled else 'enabled'}.")

    return redirect(url_for("admin.users"))


@blueprint.post("/users/<name>/reset")
@guard.admin_required
def reset(name: str) -> ResponseReturnValue:
    """Reset password and TOTP: the person enrolls again from a new link."""
    identity.find_user(guard.current_state().engine, name)

    return _users_page(InviteForm(formdata=None), link=_invite(name))


@blueprint.get("/grants")
@guard.admin_required
def grants() -> ResponseReturnValue:
    """Certificates that are neither expired nor revoked."""
    records = list_records(guard.current_state().engine, active=True)

    return render_template("admin/grants.html", records=records, form=RevokeForm())


@blueprint.post("/grants/<int:serial>/revoke")
@guard.admin_required
def revoke(serial: int) -> ResponseReturnValue:
    """Revoke now: the bastion closes the certificate's tunnels."""
    form = RevokeForm()
    access.revoke(
        guard.current_state(),
        serial,
        by=guard.user().name,
        reason=(form.reason.data or "").strip(),
    )
    flash(f"Certificate {serial} is revoked; its tunnels close within seconds.")

    return redirect(url_for("admin.grants"))


AUDIT_FILTERS = ("kind", "actor", "target")


@blueprint.get("/audit")
@guard.admin_required
def audit() -> ResponseReturnValue:
    """The audit trail, newest first, filtered by kind, actor or target."""
    filters = {key: request.args.get(key, "").strip()[:128] for key in AUDIT_FILTERS}
    events = read_audit(filters, limit=request.args.get("limit", 200, type=int))

    return render_template("admin/audit.html", events=events, filters=filters)


def read_audit(filters: dict[str, str], limit: int) -> list[dict[str, Any]]:
    """Events matching every non-empty filter, newest first."""
    query = sa.select(audit_events.c.body)
    for key, value in filters.items():
        if value:
            query = query.where(audit_events.c[key] == value)
    query = query.order_by(audit_events.c.seq.desc()).limit(max(1, min(limit, 1000)))
    with guard.current_state().engine.connect() as connection:
        rows = connection.execute(query).scalars().all()

    return [json.loads(body) for body in rows]
