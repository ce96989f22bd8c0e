"""The forms; each carries a CSRF token (Flask-WTF).

The forms check only shape (present, not absurdly long). The rules
themselves (password length, reason, duration, key type, policy) live in
the core, so that the web form and the API refuse the same things with
the same words.
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import (
    BooleanField,
    PasswordField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, Optional

from appliance.access import REASON_MAX


class LoginForm(FlaskForm):  # type: ignore[misc]
    """User name, password and a TOTP (or recovery) code."""

    username = StringField(
        "User name",
        validators=[DataRequired(), Length(max=64)],
        render_kw={"autocomplete": "username", "autocapitalize": "none"},
    )
    password = PasswordField(
        "Password",
        validators=[DataRequired(), Length(max=1024)],
        render_kw={"autocomplete": "current-password"},
    )
    code = StringField(
        "Code from your authenticator app",
        validators=[DataRequired(), Length(max=32)],
        render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"},
    )


class EnrollForm(FlaskForm):  # type: ignore[misc]
    """A new password, twice, and one code from the new TOTP secret."""

    password = PasswordField(
        "New password (at least 12 characters)",
        validators=[DataRequired(), Length(max=1024)],
        render_kw={"autocomplete": "new-password"},
    )
    confirm = PasswordField(
        "The same password again",
        validators=[DataRequired(), Length(max=1024)],
        render_kw={"autocomplete": "new-password"},
    )
    code = StringField(
        "Code the app shows now",
        validators=[DataRequired(), Length(max=32)],
        render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"},
    )


class RequestForm(FlaskForm):  # type: ignore[misc]
    """A target, a reason, a duration and a public key."""

    # The core checks the target, so an unknown or unreachable one is
    # refused and audited the same way as through the API.
    target = SelectField("Target", validate_choice=False)
    reason = StringField(
        "Reason",
        validators=[Length(max=REASON_MAX * 4)],
        render_kw={"maxlength": REASON_MAX, "autocomplete": "off"},
    )
    duration = StringField(
        "Duration", validators=[Length(max=16)], render_kw={"autocomplete": "off"}
    )
    public_key = TextAreaField("Public key", validators=[Optional(), Length(max=16384)])
    key_file = FileField("or upload the .pub file")


class InviteForm(FlaskForm):  # type: ignore[misc]
    """A new account: name, groups, admin role."""

    name = StringField("User name", validators=[DataRequired(), Length(max=64)])
    groups = StringField("Groups (comma-separated)", validators=[Length(max=512)])
    admin = BooleanField("Admin")


class RevokeForm(FlaskForm):  # type: ignore[misc]
    """Why a certificate is revoked."""

    reason = StringField("Reason", validators=[Length(max=REASON_MAX)])
