"""The Flask app factory, its security settings and its error pages."""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta

from flask import Flask, Response, g, render_template, request
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from appliance.errors import BastionError, ConfigError
from appliance.state import State

from . import admin, api, auth, guard, mine, requests
from .proxy import TrustedProxies

logger = logging.getLogger(__name__)

#: Scripts and styles only from our own static files; nothing inline.
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)

HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Same-origin only: Flask-WTF checks the referrer of HTTPS posts.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cache-Control": "no-store",
}


class WebApp(Flask):
    """Flask, logging failures by endpoint instead of by path.

    A path may hold an invitation token, which must not reach a log.
    """

    def log_exception(self, exc_info: object) -> None:
        """Log an unhandled error with the request id and endpoint only."""
        self.logger.error(
            "[%s] unhandled error in %s %s",
            g.get("request_id", "-"),
            request.method,
            request.endpoint,
            exc_info=exc_info,  # type: ignore[arg-type]
        )


def create_app(state: State) -> Flask:
    """Build the web UI for one opened state directory."""
    app = WebApp(__name__)
    app.config.update(_settings(state))
    app.extensions[guard.STATE_KEY] = state
    csrf = CSRFProtect(app)
    csrf.exempt(api.blueprint)
    for blueprint in (
        auth.blueprint,
        requests.blueprint,
        mine.blueprint,
        admin.blueprint,
        api.blueprint,
    ):
        app.register_blueprint(blueprint)
    app.before_request(_start_request)
    app.context_processor(lambda: {"me": guard.current_user()})
    app.after_request(_secure_headers)
    app.register_error_handler(BastionError, _bastion_error)
    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(HTTPException, _http_error)
    app.add_url_rule("/healthz", "healthz", lambda: "ok")
    proxies = state.config.web.trusted_proxies
    if proxies:
        app.wsgi_app = TrustedProxies(app.wsgi_app, proxies)  # type: ignore[method-assign]

    return app


def _settings(state: State) -> dict[str, object]:
    """Flask settings: the secret key from the state dir, strict cookies."""
    path = state.web_dir / "session.key"
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is missing: 'jit-bastion serve web' makes it"
        ) from None

    return {
        "SECRET_KEY": key,
        "SESSION_COOKIE_NAME": "__Host-jit-session",
        "SESSION_COOKIE_SECURE": True,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Strict",
        "PERMANENT_SESSION_LIFETIME": timedelta(seconds=guard.SESSION_MAX_AGE),
        "MAX_CONTENT_LENGTH": 64 * 1024,
        "WTF_CSRF_TIME_LIMIT": guard.SESSION_MAX_AGE,
        "PREFERRED_URL_SCHEME": "https",
    }


def _start_request() -> None:
    """Give each request an id for its log lines."""
    g.request_id = secrets.token_hex(4)


def _secure_headers(response: Response) -> Response:
    """Add the security headers, and HSTS over HTTPS."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if request.is_secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"

    return response


def _bastion_error(exc: BastionError) -> ResponseReturnValue:
    """An error the core raised on purpose: its message, its status."""
    if exc.http_status >= 500:
        logger.error("[%s] %s: %s", g.get("request_id", "-"), type(exc).__name__, exc)

    return _error_page(exc.http_status, exc.code, str(exc))


def _csrf_error(exc: CSRFError) -> ResponseReturnValue:
    """A form came without a valid CSRF token."""
    logger.info("[%s] refused a form: %s", g.get("request_id", "-"), exc.description)
    message = (
        "The form expired or was not sent from this site: "
        "reload the page and try again."
    )

    return _error_page(400, "csrf", message)


def _http_error(exc: HTTPException) -> ResponseReturnValue:
    """Not found, method not allowed and the like."""
    status = exc.code or 500
    code = exc.name.lower().replace(" ", "_")

    return _error_page(status, code, exc.description or exc.name)


def _error_page(status: int, code: str, message: str) -> ResponseReturnValue:
    """Answer with JSON under /api/, else with the error page."""
    if api.is_api_request():
        return api.error_response(status, code, message)

    return render_template("error.html", status=status, message=message), status
