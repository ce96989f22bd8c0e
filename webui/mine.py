"""My requests: active, expired and revoked."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue

from . import guard
from .grants import list_records

blueprint = Blueprint("mine", __name__)


@blueprint.get("/mine")
@guard.login_required
def requests() -> ResponseReturnValue:
    """The person's requests, newest first, with their state."""
    records = list_records(guard.current_state().engine, user=guard.user().name)

    return render_template("mine.html", records=records)
