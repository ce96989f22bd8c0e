"""A raw SSH client for offering what OpenSSH's client never sends.

Run as ``python -m tests.rawssh MODE HOST PORT USER ...`` inside a test
host; it prints one line saying what happened.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time

import asyncssh


def _string(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return struct.pack(">I", len(raw)) + raw


def forge_certificate(
    key_id: str, principals: list[str], ca_blob: bytes, serial: int
) -> bytes:
    """An Ed25519 user certificate naming ``ca_blob`` but not signed by it."""
    now = int(time.time())
    extensions = _string("permit-port-forwarding") + _string("")
    body = (
        _string("ssh-ed25519-cert-v01@openssh.com")
        + _string(os.urandom(32))
        + _string(os.urandom(32))
        + struct.pack(">QI", serial, 1)
        + _string(key_id)
        + _string(b"".join(_string(p) for p in principals))
        + struct.pack(">QQ", now - 60, now + 600)
        + _string(b"")
        + _string(extensions)
        + _string(b"")
        + _string(ca_blob)
    )
    return body + _string(_string("ssh-ed25519") + _string(os.urandom(64)))


async def _connect(host: str, port: str, user: str, keys: list[object]) -> object:
    return await asyncssh.connect(
        host,
        int(port),
        username=user,
        client_keys=keys,
        known_hosts=None,
        agent_path=None,
    )


async def offer_forged(
    host: str, port: str, user: str, ca_pub: str, count: str, key_id_length: str
) -> None:
    """Offer ``count`` forged certificates with long key ids.

    asyncssh will not load a certificate whose signature is wrong, so each
    key pair has its public blob swapped for the forged one after loading.
    """
    ca_blob = asyncssh.read_public_key(ca_pub).public_data
    keys = []
    for serial in range(1, int(count) + 1):
        pair = asyncssh.load_keypairs([asyncssh.generate_private_key("ssh-ed25519")])[0]
        pair.public_data = forge_certificate(
            "x" * int(key_id_length), [user], ca_blob, serial
        )
        pair.algorithm = pair.sig_algorithm = b"ssh-ed25519-cert-v01@openssh.com"
        keys.append(pair)
    try:
        await _connect(host, port, user, keys)
        print("accepted")
    except (asyncssh.PermissionDenied, asyncssh.DisconnectError) as exc:
        print(f"refused: {exc}")


async def open_tunnels(
    host: str, port: str, user: str, key: str, cert: str, destination: str, count: str
) -> None:
    """Log in with a real certificate and open ``count`` tunnels at once."""
    pair = (asyncssh.read_private_key(key), asyncssh.read_certificate(cert))
    conn = await _connect(host, port, user, [pair])
    name, _, dest_port = destination.rpartition(":")
    for number in range(int(count)):
        try:
            await conn.create_connection(asyncssh.SSHTCPSession, name, int(dest_port))
            print(f"tunnel {number}: opened")
        except asyncssh.ChannelOpenError as exc:
            print(f"tunnel {number}: refused: {exc.reason}")
    conn.close()
    await conn.wait_closed()


MODES = {"offer-forged": offer_forged, "open-tunnels": open_tunnels}

if __name__ == "__main__":
    asyncio.run(MODES[sys.argv[1]](*sys.argv[2:]))
