"""The web UI as a real process: ``jit-bastion serve web`` under gunicorn.

It runs in a test host (a namespace as root, else loopback) on the state
directory of an :class:`~tests.harness.ApplianceUnderTest`, and is ready
once ``/healthz`` answers over HTTPS from inside that host.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import JIT_BASTION, ApplianceUnderTest
from tests.netlab import Host


def free_loopback_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 just now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WebUnderTest:
    """``serve web`` for an appliance, listening in ``host``."""

    appliance: ApplianceUnderTest
    host: Host
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"https://{self.host.address}:{self.port}"

    @property
    def log(self) -> Path:
        return self.appliance.directory / f"web-{self.host.name}.log"

    @property
    def ca_file(self) -> Path:
        """The self-signed certificate that init made for the web UI."""
        return self.appliance.state_path / "web" / "tls.crt"

    def start(self, wait: bool = True, **settings: str) -> WebUnderTest:
        """Start gunicorn; the appliance's name is the bastion's address,
        as DNS would have it, so the ssh_config it hands out works here.

        With ``wait=False`` call :meth:`wait` later, so that other
        servers can start meanwhile."""
        env = {**os.environ, **self.appliance.env, "PYTHONUNBUFFERED": "1"}
        env["JIT_BASTION_WEB_LISTEN"] = f"{self.host.address}:{self.port}"
        env["JIT_BASTION_APPLIANCE_NAME"] = self.appliance.host.address
        env["JIT_BASTION_WEB_WORKERS"] = "1"
        env.update({f"JIT_BASTION_{k.upper()}": v for k, v in settings.items()})
        state = str(self.appliance.state_path)
        argv = [*JIT_BASTION, "--state", state, "serve", "web"]
        self.process = self.host.popen(argv, self.log, env=env)
        if wait:
            self.wait()
        return self

    def wait(self, timeout: float = 30) -> None:
        """Return once /healthz answers; fail fast if gunicorn died."""
        deadline = time.monotonic() + timeout
        check = ["curl", "-skf", "--max-time", "2", self.url + "/healthz"]
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"serve web exited:\n{self.log.read_text()}")
            if self.host.run(check, timeout=5).stdout == "ok":
                return
            time.sleep(0.2)
        raise TimeoutError(f"serve web did not answer:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            # SIGINT: gunicorn's quick stop; SIGTERM would wait out the
            # graceful timeout for a browser's kept-alive connections.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
