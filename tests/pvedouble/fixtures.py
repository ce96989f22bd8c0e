"""Pytest fixtures for the Proxmox double; load with
``pytest_plugins = ["tests.pvedouble.fixtures"]``.

``pve`` is a running double with two online nodes (``pve1``, ``pve2``)
and the token ``TOKEN_ID`` holding the three privileges jit-bastion
needs on ``/``; tests add guests. ``pve_client`` is a real
:class:`~appliance.proxmox.ProxmoxClient` trusting the double's CA with
a 1 s timeout, and ``pve_inventory`` a
:class:`~appliance.guests.GuestInventory` over it that polls quickly,
caches nothing and accepts loopback addresses, so guests can be backed
by servers on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from appliance.proxmox import ProxmoxClient
from appliance.secret import Secret

from . import TOKEN_ID, TOKEN_SECRET, schema
from .server import PVEDouble
from .tls import TLSFiles, write_tls_files

if TYPE_CHECKING:
    from appliance.guests import GuestInventory


@pytest.fixture(scope="session")
def pve_tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A CA and a 127.0.0.1 certificate, made once per run.

    Without the official schema the double cannot check itself: CI
    (which always has it) fails, elsewhere the tests are skipped, saying
    where to put it.
    """
    problem = schema.missing_schema()
    if problem and os.environ.get("CI"):
        pytest.fail(problem)
    if problem:
        pytest.skip(problem)
    return write_tls_files(tmp_path_factory.mktemp("pve-tls"))


@pytest.fixture
def pve(pve_tls: TLSFiles) -> Iterator[PVEDouble]:
    """A running double: nodes pve1 and pve2, token TOKEN_ID, no guests."""
    double = PVEDouble(pve_tls)
    double.cluster.add_node("pve1")
    double.cluster.add_node("pve2")
    double.cluster.add_token(TOKEN_ID, TOKEN_SECRET)
    with double:
        yield double


@pytest.fixture
def pve_client(pve: PVEDouble) -> Iterator[ProxmoxClient]:
    """A ProxmoxClient for the double's token, trusting its CA, 1 s timeout."""
    client = ProxmoxClient(
        pve.url, TOKEN_ID, Secret(TOKEN_SECRET), verify=str(pve.tls.ca), timeout=1.0
    )
    yield client
    client.close()


@pytest.fixture
def pve_inventory(pve_client: ProxmoxClient) -> GuestInventory:
    """The guest inventory over ``pve_client``: fast polls, no cache."""
    from appliance.guests import GuestInventory

    return GuestInventory(
        pve_client,
        target_networks=["127.0.0.0/8"],
        cache_seconds=0,
        start_timeout=5,
        poll_interval=0.05,
    )


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port on 127.0.0.1 that accepts connections (a guest's sshd)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server
