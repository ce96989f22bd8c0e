"""A Proxmox VE API double for tests and the demo.

Start one with the ``pve`` fixture (see :mod:`tests.pvedouble.fixtures`) or by
hand::

    files = write_tls_files(tmp_path)
    with PVEDouble(files) as pve:
        pve.cluster.add_node("pve1")
        pve.cluster.add_token("bastion@pve!jit", secret)
        pve.cluster.add_guest(101, "web01", "pve1", status="stopped")
        ...  # proxmoxer at pve.url with verify_ssl=str(files.ca)
"""

import socket
import uuid

from .cluster import Cluster, Failure, Guest, Node, Token
from .server import Exchange, PVEDouble
from .tls import TLSFiles, write_tls_files

#: The token the ``pve`` fixture creates, with all the privileges needed.
TOKEN_ID = "bastion@pve!jit"
#: Fresh for every run, so a test can look for it in logs.
TOKEN_SECRET = str(uuid.uuid4())


def backing(server: socket.socket) -> str:
    """Return ``host:port`` of a listening socket, for ``Guest.backing``."""
    host, port = server.getsockname()[:2]
    return f"{host}:{port}"


__all__ = [
    "TOKEN_ID",
    "TOKEN_SECRET",
    "Cluster",
    "Exchange",
    "Failure",
    "Guest",
    "Node",
    "PVEDouble",
    "TLSFiles",
    "Token",
    "backing",
    "write_tls_files",
]
