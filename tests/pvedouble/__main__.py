"""Run the Proxmox double on its own, for the demo.

    python -m tests.pvedouble DIR VMID:NAME:STATUS:ADDRESS ...

Serves nodes pve1 and pve2 over HTTPS on 127.0.0.1; writes ``DIR/url``,
the token's secret to ``DIR/token`` (mode 0600) and the CA that signed
the API's certificate to the path printed. Each guest is a QEMU VM on
pve1 tagged ``jit`` whose address is ADDRESS (a real sshd's, port 22).
Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
from pathlib import Path

from . import TOKEN_ID, PVEDouble, write_tls_files


def main(directory: Path, guests: list[str]) -> None:
    """Serve the double with ``guests`` until told to stop."""
    directory.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(16)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with PVEDouble(write_tls_files(directory)) as pve:
        pve.cluster.add_node("pve1")
        pve.cluster.add_node("pve2")
        pve.cluster.add_token(TOKEN_ID, secret)
        for spec in guests:
            vmid, name, status, address = spec.split(":")
            pve.cluster.add_guest(
                int(vmid),
                name,
                "pve1",
                status=status,
                backing=f"{address}:22",
                start_seconds=2.0,
                agent_delay=1.0,
            )
        token = directory / "token"
        token.write_text(secret)
        os.chmod(token, 0o600)
        (directory / "url").write_text(pve.url)
        print(f"Proxmox double at {pve.url}, CA {pve.tls.ca}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
