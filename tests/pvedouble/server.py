"""The HTTPS front of the double: routing, the stall switch, recording.

Every answer is recorded as an :class:`Exchange`, so a test can check
each one against the official schema afterwards.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from . import schema
from .cluster import ROUTES, Cluster, Failure
from .tls import TLSFiles

PREFIX = "/api2/json"


@dataclass(frozen=True)
class Exchange:
    """One call the double answered: what was asked and what it said."""

    method: str
    template: str
    path: str
    params: dict[str, str]
    status: int
    reason: str
    body: Any


def _compile(template: str) -> re.Pattern[str]:
    """Turn ``/nodes/{node}/tasks/{upid}`` into a regex with named groups."""
    pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
    return re.compile(f"^{pattern}$")


_TABLE = [(method, template, _compile(template)) for method, template, _ in ROUTES]


class PVEDouble:
    """A Proxmox VE API on 127.0.0.1 over HTTPS, for tests and the demo."""

    def __init__(self, tls: TLSFiles, cluster: Cluster | None = None) -> None:
        problem = schema.missing_schema()
        if problem:
            # Without it every call would fail inside a handler thread.
            raise FileNotFoundError(problem)
        self.cluster = cluster or Cluster()
        self.tls = tls
        self.exchanges: list[Exchange] = []
        self._stall = 0.0
        self._wake = threading.Event()
        self._server = _Server(self, tls.server_context())
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="pvedouble"
        )

    @property
    def port(self) -> int:
        """The port the API listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The URL to configure as ``proxmox.url``."""
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> PVEDouble:
        """Start serving in a thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Wake stalled calls, stop serving and wait for every handler."""
        self._wake.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> PVEDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stall(self, seconds: float) -> None:
        """Make every call wait ``seconds`` before it is answered (0: off)."""
        self._stall = seconds
        self._wake.clear()

    def answer(
        self, method: str, path: str, params: dict[str, str], authorization: str
    ) -> tuple[int, str, str]:
        """Answer one call; return status, reason phrase and JSON text."""
        if self._stall:
            self._wake.wait(self._stall)
        template = f"{method} {path}"
        try:
            template, args = _route(method, path)
            data = self.cluster.serve(method, template, args, params, authorization)
        except Failure as failure:
            status, reason = failure.status, failure.reason
            body: dict[str, Any] = {"data": None}
            if failure.errors:
                body["errors"] = failure.errors
        else:
            status, reason, body = 200, "OK", {"data": data}
        text = json.dumps(body)
        self.exchanges.append(
            Exchange(method, template, path, params, status, reason, json.loads(text))
        )

        return status, reason, text


def _route(method: str, path: str) -> tuple[str, dict[str, str]]:
    """Return the schema path and its arguments; 501 for anything else."""
    for route_method, template, pattern in _TABLE:
        match = pattern.match(path)
        if match and route_method == method:
            return template, match.groupdict()

    raise Failure(501, f"Method '{method} {path}' not implemented")


class _Handler(BaseHTTPRequestHandler):
    """Parses one HTTP request and writes the double's answer."""

    server: _Server

    def do_GET(self) -> None:
        self._respond("GET")

    def do_POST(self) -> None:
        self._respond("POST")

    def _respond(self, method: str) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if method == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            params.update(parse_qsl(body, keep_blank_values=True))
        path = unquote(url.path).removeprefix(PREFIX)
        status, reason, text = self.server.double.answer(
            method, path, params, self.headers.get("Authorization", "")
        )
        payload = text.encode()
        self.send_response(status, reason.strip().replace("\n", " "))
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet; tests read :attr:`PVEDouble.exchanges` instead."""


class _Server(ThreadingHTTPServer):
    """Threads per connection, TLS handshake in the handler's thread."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, double: PVEDouble, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.double = double
        self.context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            connection = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client refused our certificate; it reports that
        with connection:
            self.RequestHandlerClass(connection, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout) is no error of the double."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        request.close()
