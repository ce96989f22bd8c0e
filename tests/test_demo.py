"""The README's first command runs, so the demo cannot rot."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_logs_in_to_the_target_through_the_bastion() -> None:
    env = {
        **os.environ,
        "JIT_DEMO_SSH_PORT": str(_free_port()),
        "JIT_DEMO_TARGET_PORT": str(_free_port()),
        "JIT_DEMO_WEB_PORT": str(_free_port()),
    }

    result = subprocess.run(
        [str(ROOT / "scripts" / "demo")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Logged in to {socket.gethostname()} as " in result.stdout
    assert "through jit-bastion" in result.stdout
    assert "ssh -F" in result.stdout
    assert "/enroll/" in result.stdout
    if os.geteuid() == 0:
        assert "Logged in to db01 (" in result.stdout
        assert "after the bastion started it" in result.stdout


def test_demo_refuses_a_port_that_is_taken() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "JIT_DEMO_SSH_PORT": str(port)}

        result = subprocess.run(
            [str(ROOT / "scripts" / "demo")],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )

    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken" in result.stderr
