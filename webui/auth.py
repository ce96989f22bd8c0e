"""Login, logout and enrollment from an invitation link."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import segno
from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from appliance import identity
from appliance.errors import AuthFailed, InputError
from appliance.secret import Secret

from . import guard
from .forms import EnrollForm, LoginForm

logger = logging.getLogger(__name__)

blueprint = Blueprint("auth", __name__)


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """Check user name, password and code; one message whatever failed."""
    form = LoginForm()
    if not form.validate_on_submit():
        status = 400 if request.method == "POST" else 200
        return render_template("login.html", form=form), status
    state = guard.current_state()
    try:
        user = identity.authenticate(
            state,
            form.username.data,
            Secret(form.password.data),
            Secret(form.code.data),
            address=guard.client_address(),
            via="web",
        )
    except AuthFailed as exc:
        form.code.data = ""
        return render_template("login.html", form=form, error=str(exc)), 401
    guard.log_in(user)

    return redirect(_safe_next(request.args.get("next")))


def _safe_next(target: str | None) -> str:
    """Follow ``next`` only to a path on this site."""
    parts = urlsplit(target or "")
    local = target and target.startswith("/") and not target.startswith("//")
    if not local or parts.scheme or parts.netloc or "\\" in (target or ""):
        return url_for("requests.ask")

    return str(target)


@blueprint.post("/logout")
def logout() -> ResponseReturnValue:
    """End the session (CSRFProtect has checked the form's token)."""
    guard.log_out()
    flash("You are logged out.")

    return redirect(url_for("auth.login"))


@blueprint.route("/enroll/<token>", methods=["GET", "POST"])
def enroll(token: str) -> ResponseReturnValue:
    """Set a password and confirm a TOTP code; show the recovery codes once."""
    state = guard.current_state()
    invitation = identity.open_invitation(state, Secret(token))
    form = EnrollForm()
    error = None
    if form.validate_on_submit():
        try:
            codes = _enroll(token, form)
        except InputError as exc:
            error = str(exc)
        else:
            guard.log_out()
            return render_template(
                "enrolled.html", name=invitation.user.name, codes=codes
            )
    uri = identity.totp_uri(
        invitation.secret, invitation.user.name, state.config.appliance.name
    )
    status = 400 if request.method == "POST" else 200

    return render_template(
        "enroll.html",
        form=form,
        error=error,
        name=invitation.user.name,
        secret=_grouped(invitation.secret),
        qr=segno.make(uri, error="m").svg_inline(scale=5, light="#fff"),
        expires_at=invitation.expires_at,
    ), status


def _enroll(token: str, form: EnrollForm) -> list[Secret]:
    """Check the two passwords agree, then enroll."""
    if form.password.data != form.confirm.data:
        raise InputError("the two passwords differ: type the same one twice")

    return identity.enroll(
        guard.current_state(),
        Secret(token),
        Secret(form.password.data),
        Secret(form.code.data),
    )


def _grouped(secret: Secret) -> str:
    """The secret in groups of four, easier to type into an app."""
    text = secret.reveal()

    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))
