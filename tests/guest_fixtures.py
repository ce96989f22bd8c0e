"""Helpers for tests that wire Proxmox guests into the appliance.

:func:`configure_proxmox` points a state directory at a running double
(URL, token, CA, networks, policy). :class:`NamespaceRelay` makes the
double, which runs in the test process, reachable from inside a test
host's network namespace at the same ``https://127.0.0.1:PORT``: the
bastion runs in a namespace of its own, whose loopback is not ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from appliance.config import CONFIG_NAME
from appliance.state import set_config_value
from tests.pvedouble import TOKEN_ID, TOKEN_SECRET, PVEDouble

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def configure_proxmox(
    state_path: Path,
    pve: PVEDouble,
    *,
    networks: Sequence[str] = (),
    addresses: Sequence[str] = (),
    policy: Sequence[Mapping[str, Any]] = (),
    **settings: str,
) -> None:
    """Write a ``[proxmox]`` section for ``pve`` and ``[[policy]]`` rules."""
    path = state_path / CONFIG_NAME
    text = path.read_text()
    values = {
        "url": pve.url,
        "token_id": TOKEN_ID,
        "token_secret": TOKEN_SECRET,
        "verify_tls": str(pve.tls.ca),
        **settings,
    }
    for key, value in values.items():
        text = set_config_value(text, "proxmox", key, value)
    for key, items in (("target_networks", networks), ("addresses", addresses)):
        line = re.compile(rf"^{key} = \[\]$", re.M)
        text = line.sub(f"{key} = {_toml(list(items))}", text, count=1)
    for rule in policy:
        text += "\n[[policy]]\n"
        text += "".join(f"{key} = {_toml(value)}\n" for key, value in rule.items())
    path.write_text(text)


def _toml(value: Any) -> str:
    """Write a string, number, boolean or list of them as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def in_namespace(netns: str | None, call: Callable[[], T]) -> T:
    """Run ``call`` in a thread that has entered network namespace ``netns``.

    Sockets keep the namespace they were made in, so a listening socket
    made here serves that namespace from any thread afterwards. Without
    a namespace (not root), ``call`` runs here.
    """
    if netns is None:
        return call()
    result: list[T] = []
    errors: list[BaseException] = []

    def enter_and_call() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
            result.append(call())
        except BaseException as exc:
            errors.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=enter_and_call, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]

    return result[0]


class NamespaceRelay:
    """Relays TCP from ``127.0.0.1:port`` inside a namespace to ours.

    Bytes pass through untouched, so TLS to the double still ends at
    the double, with its certificate for 127.0.0.1.
    """

    def __init__(self, netns: str | None, port: int) -> None:
        self.netns = netns
        self.port = port
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> NamespaceRelay:
        """Listen inside the namespace and relay in threads."""
        if self.netns is None:
            return self  # one loopback for all: nothing to relay
        self._server = in_namespace(self.netns, self._listen)
        self._spawn(self._accept)
        return self

    def _listen(self) -> socket.socket:
        server = socket.create_server(("127.0.0.1", self.port))
        server.settimeout(0.1)
        return server

    def _accept(self) -> None:
        assert self._server is not None
        while self._server.fileno() != -1:
            try:
                inner, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(_relay, inner, ("127.0.0.1", self.port))

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        """Stop listening; relayed connections end with their peers."""
        if self._server is not None:
            self._server.close()


def _relay(inner: socket.socket, outer_address: tuple[str, int]) -> None:
    """Relay one accepted connection both ways; close both ends after."""
    with inner, socket.create_connection(outer_address) as outer:
        back = threading.Thread(target=_pump, args=(outer, inner), daemon=True)
        back.start()
        _pump(inner, outer)
        back.join()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes from ``source`` to ``sink``; pass the end of data on."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
