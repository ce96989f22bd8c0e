"""``jit-bastion serve web``: the web UI under gunicorn.

HTTPS with the configured certificate, or the self-signed pair made at
init. Plain HTTP only when ``web.trusted_proxies`` names the reverse
proxies in front; their forwarded headers are believed, nobody else's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from appliance.state import State

from .app import create_app

logger = logging.getLogger(__name__)


def gunicorn_settings(state: State) -> dict[str, Any]:
    """gunicorn's settings for the web section of the config."""
    web = state.config.web
    settings: dict[str, Any] = {
        "bind": [web.listen],
        "workers": web.workers,
        "worker_class": "gthread",
        "threads": 4,
        "timeout": 30,
        "graceful_timeout": 10,
        "proc_name": "jit-bastion-web",
        # Forwarded headers are handled by TrustedProxies, not gunicorn.
        "forwarded_allow_ips": ",".join(web.trusted_proxies),
        "secure_scheme_headers": {},
        "control_socket_disable": True,
        "accesslog": None,
    }
    if not web.trusted_proxies:
        settings["certfile"] = web.tls_certificate or str(state.web_dir / "tls.crt")
        settings["keyfile"] = web.tls_key or str(state.web_dir / "tls.key")

    return settings


class WebServer(BaseApplication):  # type: ignore[misc]
    """gunicorn running :func:`webui.create_app` in each worker."""

    def __init__(self, state: State) -> None:
        self.state = state
        super().__init__()

    def load_config(self) -> None:
        """Hand gunicorn the settings made from the config."""
        for key, value in gunicorn_settings(self.state).items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """Open the state afresh in the worker and build the app."""
        return create_app(State.open(self.state.path))


def serve(path: Path) -> None:
    """Run the web UI for the state directory ``path`` until SIGTERM."""
    state = State.open(path)
    state.write_web_keys()
    scheme = "http" if state.config.web.trusted_proxies else "https"
    logger.info("Web UI listening on %s://%s", scheme, state.config.web.listen)
    WebServer(state).run()
