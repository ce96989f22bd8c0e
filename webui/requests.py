"""Asking for access: the request form, the result page, the download."""

from __future__ import annotations

import logging

from flask import (
    Blueprint,
    Response,
    abort,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue

from appliance import access, identity
from appliance.config import format_duration
from appliance.errors import BastionError, NotFound

from . import guard
from .connect import instructions
from .forms import RequestForm
from .grants import Record, find_record
from .targets import Reachable, reachable_targets

logger = logging.getLogger(__name__)

blueprint = Blueprint("requests", __name__)


@blueprint.route("/", methods=["GET", "POST"])
@guard.login_required
def ask() -> ResponseReturnValue:
    """The request form; a good request leads to its result page."""
    state = guard.current_state()
    user = guard.user()
    reachable = reachable_targets(state, user)
    form = RequestForm()
    form.target.choices = [(t.name, t.name) for t in reachable]
    if request.method == "GET":
        form.public_key.data = identity.read_public_key(state.engine, user.name)
        form.duration.data = format_duration(state.config.certificates.default_ttl)
    if not form.validate_on_submit():
        status = 400 if request.method == "POST" else 200
        return _form_page(form, reachable, None, status)
    try:
        record = _issue(form)
    except BastionError as exc:
        if "PRIVATE KEY" in (form.public_key.data or ""):
            form.public_key.data = ""
        return _form_page(form, reachable, str(exc), exc.http_status)

    return redirect(url_for("requests.result", request_id=record.request_id))


def _form_page(
    form: RequestForm, reachable: list[Reachable], error: str | None, status: int
) -> ResponseReturnValue:
    """Render the request form."""
    state = guard.current_state()
    page = render_template(
        "request.html",
        form=form,
        targets=reachable,
        error=error,
        max_ttl=format_duration(state.config.certificates.max_ttl),
        format_duration=format_duration,
    )

    return page, status


def _issue(form: RequestForm) -> Record:
    """Ask the core for a certificate; remember the key that worked."""
    state = guard.current_state()
    user = guard.user()
    public_key = _public_key(form)
    issued = access.issue_certificate(
        state,
        user=user.name,
        target=form.target.data or "",
        reason=form.reason.data or "",
        public_key=public_key,
        ttl=(form.duration.data or "").strip() or None,
        source=guard.client_address(),
        via="web",
    )
    identity.write_public_key(state.engine, user.name, public_key.strip())
    logger.info("[%s] %r got certificate %d", g.request_id, user.name, issued.serial)

    return find_record(state.engine, issued.request_id)


def _public_key(form: RequestForm) -> str:
    """The uploaded .pub file when there is one, else the pasted text."""
    upload = form.key_file.data
    if upload and getattr(upload, "filename", ""):
        data: bytes = upload.read(16384)
        return data.decode("utf-8", errors="replace")

    return str(form.public_key.data or "")


def _own_record(request_id: str) -> Record:
    """The request, if it is the person's own (or the person is an admin)."""
    user = guard.user()
    try:
        record = find_record(guard.current_state().engine, request_id)
    except NotFound:
        abort(404, "No such request.")
    if record.user != user.name and not user.is_admin:
        abort(404, "No such request.")

    return record


@blueprint.get("/requests/<request_id>")
@guard.login_required
def result(request_id: str) -> ResponseReturnValue:
    """The certificate, the ssh_config block, known_hosts line and command."""
    record = _own_record(request_id)
    how = instructions(guard.current_state(), record)

    return render_template("result.html", record=record, how=how)


@blueprint.get("/requests/<request_id>/certificate")
@guard.login_required
def certificate(request_id: str) -> ResponseReturnValue:
    """The certificate as a file to save beside the private key."""
    record = _own_record(request_id)
    how = instructions(guard.current_state(), record)
    disposition = f'attachment; filename="{how.certificate_name}"'

    return Response(
        record.certificate + "\n",
        mimetype="text/plain",
        headers={"Content-Disposition": disposition},
    )
