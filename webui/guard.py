"""Who is asking: the state, the logged-in person, and the view guards.

The session cookie is signed, HttpOnly, Secure and SameSite=Strict. It
holds the account's id and name and two times; every request reloads the
account, so a disabled account or a reset enrollment ends its sessions at
once. A login starts from an empty session (no fixation).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from flask import abort, current_app, g, redirect, request, session, url_for
from flask.typing import ResponseReturnValue

from appliance import identity
from appliance.errors import NotFound
from appliance.identity import User
from appliance.state import State

STATE_KEY = "jit_bastion.state"
#: A session ends this long after login, however busy.
SESSION_MAX_AGE = 8 * 3600
#: A session ends after this long without a request.
SESSION_IDLE = 30 * 60

P = ParamSpec("P")
R = TypeVar("R")


def current_state() -> State:
    """The state directory this app serves."""
    state: State = current_app.extensions[STATE_KEY]
    return state


def client_address() -> str:
    """The requester's address (a trusted proxy's X-Forwarded-For applied)."""
    return request.remote_addr or "unknown"


def log_in(user: User) -> None:
    """Start a new session for ``user``, dropping everything from before."""
    session.clear()
    session.permanent = True
    now = int(time.time())
    session.update(uid=user.id, name=user.name, login_at=now, seen_at=now)


def log_out() -> None:
    """End the session."""
    session.clear()


def current_user() -> User | None:
    """The logged-in, enabled, enrolled account, or None."""
    if "user" not in g:
        g.user = _load_user()

    user: User | None = g.user
    return user


def _load_user() -> User | None:
    """Read the session and the account behind it; None if either is stale."""
    name, uid = session.get("name"), session.get("uid")
    now = int(time.time())
    fresh = now - int(session.get("login_at", 0)) < SESSION_MAX_AGE
    active = now - int(session.get("seen_at", 0)) < SESSION_IDLE
    if not isinstance(name, str) or not (fresh and active):
        return None
    try:
        user = identity.find_user(current_state().engine, name)
    except NotFound:
        return None
    if user.id != uid or user.disabled or not user.enrolled:
        return None
    session["seen_at"] = now

    return user


def login_required(view: Callable[P, R]) -> Callable[P, R | ResponseReturnValue]:
    """Send a visitor without a session to the login page."""

    @functools.wraps(view)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R | ResponseReturnValue:
        if current_user() is None:
            session.clear()
            return redirect(url_for("auth.login", next=request.path))
        return view(*args, **kwargs)

    return guarded


def admin_required(view: Callable[P, R]) -> Callable[P, R | ResponseReturnValue]:
    """Allow only accounts whose role is admin; deny everyone else (403)."""

    @functools.wraps(view)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R | ResponseReturnValue:
        user = current_user()
        if user is None:
            return redirect(url_for("auth.login", next=request.path))
        if not user.is_admin:
            abort(403, "This page is for admins.")
        return view(*args, **kwargs)

    return guarded


def user() -> User:
    """The logged-in account, inside a guarded view."""
    found = current_user()
    if found is None:
        abort(401)

    return found
