"""Forwarded headers, believed only from the configured reverse proxies.

Werkzeug's ProxyFix trusts whoever sends the headers; this middleware
applies it only when the connection comes from a trusted proxy and strips
the headers from everyone else, so nobody can pick their own address for
the lockout and the audit trail.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

from werkzeug.middleware.proxy_fix import ProxyFix

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

_FORWARDED = (
    "HTTP_FORWARDED",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_FORWARDED_PREFIX",
    "HTTP_X_REAL_IP",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Apply X-Forwarded-* from ``networks`` only; drop them otherwise."""

    def __init__(self, app: WSGIApplication, networks: Iterable[str]) -> None:
        self.app = app
        self.networks: list[Network] = [
            ipaddress.ip_network(n, strict=False) for n in networks
        ]
        self.fixed = ProxyFix(app, x_for=1, x_proto=1, x_host=1, x_port=1)

    def trusts(self, address: str | None) -> bool:
        """Whether ``address`` is one of the trusted proxies."""
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False

        return any(ip in network for network in self.networks)

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if self.trusts(environ.get("REMOTE_ADDR")):
            return self.fixed(environ, start_response)
        for name in _FORWARDED:
            environ.pop(name, None)

        return self.app(environ, start_response)
