"""Container health check: ask the service this container runs.

The bastion is healthy when its port answers with an SSH banner; the web
UI when it answers an HTTP request (over TLS unless a trusted proxy
fronts it). Which service runs is read from the processes' command
lines, so the one image's ``HEALTHCHECK`` fits both containers.
Exit status 0 is healthy, 1 unhealthy, as Docker expects.
"""

from __future__ import annotations

import http.client
import itertools
import socket
import ssl
import sys
from pathlib import Path

from appliance.config import load_config, parse_hostport, state_dir
from appliance.errors import BastionError

TIMEOUT = 5.0
#: Where to knock for a listener bound to every address.
LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


def read_service() -> str:
    """Return ``ssh`` or ``web``: what ``jit-bastion serve`` runs here."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        for first, second in itertools.pairwise(argv):
            if first == b"serve" and second in (b"ssh", b"web"):
                return second.decode()
    raise LookupError("no 'jit-bastion serve ssh|web' process runs here")


def local_address(listen: str, default_port: int) -> tuple[str, int]:
    """Where to reach a listener from inside the container."""
    host, port = parse_hostport(listen, default_port)

    return LOOPBACK.get(host, host), port


def probe_ssh(address: tuple[str, int]) -> str:
    """Read the bastion's SSH identification string."""
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        banner = sock.recv(256)
    if not banner.startswith(b"SSH-2.0-"):
        raise ConnectionError(f"no SSH banner on {address}: {banner[:40]!r}")

    return banner.decode(errors="replace").strip()


def probe_web(address: tuple[str, int], tls: bool) -> str:
    """Ask the web UI for its front page; any answer below 500 is health."""
    host, port = address
    connection: http.client.HTTPConnection
    if tls:
        # The certificate is checked by people's browsers; here only the
        # answer matters, and the default one is self-signed.
        context = ssl._create_unverified_context()  # noqa: S323
        connection = http.client.HTTPSConnection(
            host, port, timeout=TIMEOUT, context=context
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/", headers={"User-Agent": "jit-bastion-health"})
        status = connection.getresponse().status
    finally:
        connection.close()
    if status >= 500:
        raise ConnectionError(f"web UI answered HTTP {status}")

    return f"HTTP {status}"


def main() -> int:
    """Probe the running service; print one line saying how it went."""
    try:
        config = load_config(state_dir(None))
        if read_service() == "ssh":
            answer = probe_ssh(local_address(config.ssh.listen, 2222))
        else:
            tls = not config.web.trusted_proxies
            answer = probe_web(local_address(config.web.listen, 8443), tls)
    except (OSError, LookupError, ValueError, BastionError) as exc:
        print(f"unhealthy: {exc}")
        return 1
    print(f"healthy: {answer}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
