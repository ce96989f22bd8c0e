"""The bastion: an SSH server that accepts only this appliance's short-lived
user certificates and forwards only to the targets they were issued for.

People reach it with stock OpenSSH, ``ssh -J alice@bastion alice@web01``.
Authentication is public key with a certificate and nothing else; the
bastion adds its own checks to asyncssh's (see :mod:`.certificate`),
records the reason for each refusal, and looks up the grant behind the
certificate's serial. The only channels it opens are ``direct-tcpip``
ones to the granted target, relayed by :mod:`.forward`. A target is
found through :mod:`.inventory`; a granted Proxmox guest that is stopped
is started first when the grant allows it, and the channel open waits
for it within ``proxmox.start_timeout``. When a certificate reaches
``valid_before``, or its serial is revoked, the connection and its
tunnels are closed with that reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import signal
import time
from collections.abc import Awaitable
from typing import Any

import asyncssh
from sqlalchemy.exc import SQLAlchemyError

from . import access, identity, inventory
from .audit import log_head
from .certificate import (
    CERT_TYPE_USER,
    Certificate,
    MalformedCertificate,
    Offer,
    Rules,
    format_timestamp,
    is_certificate_blob,
    judge,
    parse_certificate,
)
from .config import parse_hostport
from .errors import BastionError, NodeOffline, NotFound, Refused, Unavailable
from .forward import ConnectFailed, Tunnel, open_tunnel
from .guests import GuestInventory, StartStage
from .inventory import Target
from .names import is_login_name
from .state import State

logger = logging.getLogger(__name__)

#: Offers of keys on one connection before it is closed (OpenSSH's
#: MaxAuthTries), and the largest key blob worth reading.
MAX_AUTH_ATTEMPTS = 6
MAX_KEY_BLOB = 16 * 1024

#: Key exchange and MAC algorithms offered: no SHA-1, no small groups.
KEX_ALGS = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp521",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp256",
    "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group14-sha256",
)
MAC_ALGS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "umac-128-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
    "umac-128@openssh.com",
)

ONLY_FORWARDS = (
    "jit-bastion only forwards connections to granted targets: "
    "use ssh -J USER@BASTION USER@TARGET"
)


class Bastion:
    """Listens for SSH connections and keeps track of the live ones."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.rules = Rules(
            ca_key=state.ca.user_ca_key().public_data,
            max_lifetime=state.config.certificates.max_ttl,
            skew=state.config.ssh.skew,
        )
        self.connections: set[BastionConnection] = set()
        self._ids = itertools.count(1)
        self._background: set[asyncio.Task[Any]] = set()
        self._server: asyncssh.SSHAcceptor | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._head_logger: asyncio.Task[None] | None = None

    async def start(self) -> asyncssh.SSHAcceptor:
        """Start listening on the configured address."""
        ssh = self.state.config.ssh
        host, port = parse_hostport(ssh.listen, 2222)
        self.state.write_host_certificate()
        self._server = await asyncssh.create_server(
            self._new_connection,
            host,
            port,
            server_host_keys=[str(self.state.host_key_path)],
            server_host_certs=[str(self.state.host_certificate_path)],
            public_key_auth=True,
            password_auth=False,
            kbdint_auth=False,
            host_based_auth=False,
            gss_host=None,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_pty=False,
            login_timeout=ssh.login_timeout,
            keepalive_interval=ssh.keepalive_interval,
            keepalive_count_max=3,
            encryption_algs=list(ssh.ciphers),
            kex_algs=list(KEX_ALGS),
            mac_algs=list(MAC_ALGS),
        )
        self._watcher = asyncio.create_task(self._watch_revocations())
        self._head_logger = asyncio.create_task(
            log_head(self.state.engine, self.state.config.audit.head_interval)
        )
        logger.info(
            "Bastion listening on %s, user CA %s",
            ssh.listen,
            self.state.ca.user_fingerprint,
        )

        return self._server

    async def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then close every connection."""
        server = await self.start()
        self.spawn(self._learn_targets())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logger.info("Shutting down: closing %d connections", len(self.connections))
        server.close()
        for connection in list(self.connections):
            connection.close_with("the bastion is shutting down")
        await server.wait_closed()
        await self.close()

    async def _learn_targets(self) -> None:
        """List the targets once at start, so the operator sees what counts.

        This also teaches the inventory the guests' names while their
        nodes answer: an offline node's guests are listed without one.
        """
        listing = await inventory.gather_targets(self.state)
        guests = sum(1 for target in listing if target.guest is not None)
        logger.info(
            "Targets: %d static, %d Proxmox guests", len(listing) - guests, guests
        )
        if listing.problem:
            logger.warning("%s", listing.problem)

    def _new_connection(self) -> BastionConnection:
        return BastionConnection(self, f"c{next(self._ids)}")

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` in the background, keeping a reference to it."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Background task failed: %r", task.exception())

    def audit(self, kind: str, **fields: Any) -> None:
        """Record an audit event from a worker thread, off the event loop."""
        self.spawn(asyncio.to_thread(self.state.auditor.record, kind, **fields))

    async def record(self, kind: str, **fields: Any) -> bool:
        """Record an event and wait until it is stored, so that a client
        never sees a step the audit trail lacks; False if the store failed."""
        try:
            await asyncio.to_thread(self.state.auditor.record, kind, **fields)
        except SQLAlchemyError as exc:
            logger.error("Could not record %s: %s", kind, type(exc).__name__)
            return False

        return True

    async def address_lock(self, address: str) -> str | None:
        """Why ``address`` may not log in now, or None: web and SSH failures
        from one address share one lockout."""
        key = identity.lockout_keys("", address)[1]
        try:
            locked = await asyncio.to_thread(
                identity.is_locked, self.state.engine, (key,)
            )
        except SQLAlchemyError:
            return "the appliance's store is unavailable"

        return f"{address} is locked after repeated failures" if locked else None

    async def count_failure(self, address: str) -> None:
        """Count one failure against ``address`` in the shared lockout."""
        key = identity.lockout_keys("", address)[1]
        try:
            await asyncio.to_thread(identity.record_failures, self.state, (key,))
        except SQLAlchemyError as exc:
            logger.error("Could not count a failure: %s", type(exc).__name__)

    async def is_user(self, name: str) -> bool:
        """Whether ``name`` is an account here; True when the store is down."""
        try:
            await asyncio.to_thread(identity.find_user, self.state.engine, name)
        except NotFound:
            return False
        except SQLAlchemyError:
            return True

        return True

    async def find_grant(self, serial: int) -> access.Grant:
        """Look up a grant off the event loop; a store failure is Unavailable."""
        try:
            return await asyncio.to_thread(access.find_grant, self.state.engine, serial)
        except SQLAlchemyError as exc:
            # The driver's text can name hosts and users; keep it to the class.
            logger.error("The store did not answer: %s", type(exc).__name__)
            raise Unavailable("the appliance's store is unavailable") from None

    async def close(self) -> None:
        """Stop watching revocations and wait for audit writes to finish."""
        for loop_task in (self._watcher, self._head_logger):
            if loop_task:
                loop_task.cancel()
        pending = [t for t in self._background if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=10)

    async def _watch_revocations(self) -> None:
        """Close connections whose certificate was revoked, within seconds."""
        interval = self.state.config.ssh.revocation_poll
        while True:
            await asyncio.sleep(interval)
            live: dict[int, list[BastionConnection]] = {}
            for connection in self.connections:
                if connection.serial is not None:
                    live.setdefault(connection.serial, []).append(connection)
            if not live:
                continue
            try:
                revoked = await asyncio.to_thread(
                    access.revoked_among, self.state.engine, list(live)
                )
            except Exception:
                logger.exception("Could not read revocations; will retry")
                continue
            for serial in revoked:
                for connection in live[serial]:
                    connection.close_with("certificate revoked")


class BastionConnection(asyncssh.SSHServer):
    """One client connection: authentication, then tunnels."""

    def __init__(self, bastion: Bastion, conn_id: str) -> None:
        self._bastion = bastion
        self._state = bastion.state
        self.conn_id = conn_id
        self.peer = "?"
        self.login = "?"
        self.certificate: Certificate | None = None
        self.grant: access.Grant | None = None
        self.tunnels: set[Tunnel] = set()
        self._conn: asyncssh.SSHServerConnection | None = None
        self._login_refusal: str | None = None
        self._offers = 0
        self._closed = False
        self._logins_checked: set[str] = set()
        # Keyed by login and key: a client may change the login between
        # attempts, and a verdict for one login says nothing of another.
        self._verdicts: dict[tuple[str, bytes], str | None] = {}
        self._grants: dict[bytes, access.Grant] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._closing_reason: str | None = None

    @property
    def serial(self) -> int | None:
        """The serial of the certificate this connection logged in with."""
        return self.certificate.serial if self.certificate else None

    def _log(self, level: int, message: str, *args: Any) -> None:
        logger.log(
            level, "[%s %s@%s] " + message, self.conn_id, self.login, self.peer, *args
        )

    # Connection events.

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """Note the real peer and put the bastion's checks in front."""
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "?"
        self._bastion.connections.add(self)
        _wrap_certificate_checks(conn, self)
        self._log(logging.INFO, "Connection opened")

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection and record how it ended."""
        self._bastion.connections.discard(self)
        self._closed = True
        if self._expiry:
            self._expiry.cancel()
        for tunnel in list(self.tunnels):
            if not tunnel.attached:
                tunnel.close("the connection closed before the tunnel attached")
        reason = self._closing_reason or (str(exc) if exc else "closed by client")
        self._log(logging.INFO, "Connection closed: %s", reason)
        if self.certificate:
            self._bastion.audit(
                "connection.closed",
                **self._about(),
                reason=reason,
                outcome="closed",
            )

    def begin_auth(self, username: str) -> bool:
        """Refuse login names that are not plain POSIX names, up front."""
        self.login = username if is_login_name(username) else repr(username)
        self._login_refusal = None
        if not is_login_name(username):
            self._login_refusal = f"login name {username!r} is not allowed"
            self._refuse_auth(self._login_refusal)

        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Plain public keys are never accepted: deny by default."""
        return False

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Accept only the appliance's user CA; deny any other."""
        return key.public_data == self._bastion.rules.ca_key

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def auth_completed(self) -> None:
        """Start the clock that ends the connection with the certificate."""
        assert self.certificate is not None and self.grant is not None
        cert = self.certificate
        self._log(
            logging.INFO,
            "Authenticated with certificate %d (%s), valid until %s",
            cert.serial,
            cert.key_id,
            format_timestamp(cert.valid_before),
        )
        delay = max(0.0, cert.valid_before - time.time())
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(delay, self._certificate_expired)

    def _certificate_expired(self) -> None:
        if self._state.config.ssh.close_on_expiry:
            self.close_with("certificate expired")
        else:
            self._log(logging.INFO, "Certificate expired; sessions are kept open")

    def close_with(self, reason: str) -> None:
        """Close every tunnel and the connection, recording ``reason``."""
        if self._closing_reason or self._conn is None:
            return
        self._closing_reason = reason
        self._log(logging.INFO, "Closing connection: %s", reason)
        for tunnel in list(self.tunnels):
            tunnel.close(reason)
        self._conn.disconnect(asyncssh.DISC_BY_APPLICATION, reason)

    # Authentication, called through the wrapper around asyncssh's checks.

    async def judge_offer(self, username: str, key_data: bytes) -> str | None:
        """Return why an offered key must be refused, or None to go on."""
        if (username, key_data) in self._verdicts:
            return self._verdicts[username, key_data]
        self._offers += 1
        if self._offers > MAX_AUTH_ATTEMPTS:
            return self._too_many_offers()
        if len(key_data) > MAX_KEY_BLOB:
            too_large = "the offered key is too large to be a certificate"
            self._verdicts[username, key_data] = too_large
            self._refuse_auth(too_large)
            return too_large
        reason = self._login_refusal or await self._judge(username, key_data)
        # A lock stops guessing, not the holder of a good certificate: a few
        # junk attempts from a shared NAT address must not lock everyone out.
        lock = await self._bastion.address_lock(self.peer) if reason else None
        reason = lock or reason
        self._verdicts[username, key_data] = reason
        if reason:
            self._refuse_auth(reason, key_data)
        if reason and not lock:
            await self._count_failure(username, key_data)

        return reason

    async def _count_failure(self, username: str, key_data: bytes) -> None:
        """Count a refused certificate, and once an unknown login, against
        the peer's address; plain keys a client offers besides do not count."""
        if is_certificate_blob(key_data):
            await self._bastion.count_failure(self.peer)
            return
        if username in self._logins_checked:
            return
        self._logins_checked.add(username)
        if not await self._bastion.is_user(username):
            await self._bastion.count_failure(self.peer)

    async def _judge(self, username: str, key_data: bytes) -> str | None:
        if not is_certificate_blob(key_data):
            return "a plain public key was offered; only certificates are accepted"
        try:
            cert = parse_certificate(key_data)
        except MalformedCertificate as exc:
            return f"malformed certificate: {exc}"
        offer = Offer(username, self.peer, time.time())
        reason = judge(cert, offer, self._bastion.rules)
        if reason:
            return reason
        try:
            grant = await self._bastion.find_grant(cert.serial)
        except NotFound:
            return f"serial {cert.serial} was not issued by this appliance"
        except Unavailable as exc:
            return str(exc)
        if grant.revoked:
            return f"certificate serial {cert.serial} is revoked"
        if grant.user != username:
            return f"certificate was issued to {grant.user!r}, not {username!r}"
        self._grants[key_data] = grant

        return None

    async def accept_offer(self, key_data: bytes) -> bool:
        """Record the login whose signature asyncssh just verified, then
        remember its certificate; refuse it if it cannot be recorded."""
        cert, grant = parse_certificate(key_data), self._grants[key_data]
        recorded = await self._bastion.record(
            "auth.accepted",
            actor=self.login,
            source=self.peer,
            serial=cert.serial,
            key_id=cert.key_id,
            target=grant.target,
            request_id=grant.request_id,
            outcome="accepted",
        )
        if recorded:
            self.certificate, self.grant = cert, grant

        return recorded

    def _too_many_offers(self) -> str:
        """Close a connection that keeps offering keys."""
        reason = "too many authentication attempts"
        if not self._closing_reason:
            self._refuse_auth(reason)
            self.close_with(reason)

        return reason

    def refused_by_asyncssh(self, username: str, key_data: bytes) -> None:
        """Record a certificate that passed the bastion's checks but failed
        asyncssh's own (a bad CA or user signature)."""
        if self._verdicts.get((username, key_data)) is None:
            reason = "the certificate failed the signature checks"
            self._verdicts[username, key_data] = reason
            self._refuse_auth(reason, key_data)

    def _refuse_auth(self, reason: str, key_data: bytes | None = None) -> None:
        serial = key_id = None
        if key_data and is_certificate_blob(key_data):
            try:
                cert = parse_certificate(key_data)
                # Not verified yet: keep it short, it is the client's word.
                serial, key_id = cert.serial, cert.key_id[:64]
            except MalformedCertificate:
                pass
        self._log(logging.WARNING, "Refused authentication: %s", reason)
        self._bastion.audit(
            "auth.refused",
            actor=self.login,
            source=self.peer,
            serial=serial,
            key_id=key_id,
            reason=reason,
            outcome="refused",
        )

    # Channels.

    def session_requested(self) -> bool:
        """Shells, commands and subsystems are refused: the bastion forwards."""
        self._log(logging.INFO, "Refused a session channel")
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, ONLY_FORWARDS
        )

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        """Remote forwarding (``ssh -R``) is refused."""
        self._log(
            logging.INFO, "Refused remote forwarding of %r:%d", listen_host, listen_port
        )
        self._bastion.audit(
            "tunnel.refused",
            **self._about(),
            reason="remote forwarding is not supported",
            outcome="refused",
            listen=f"{listen_host}:{listen_port}",
        )
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        """Forwarding to UNIX sockets is refused."""
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, ONLY_FORWARDS
        )

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[Tunnel]:
        """Open a tunnel to a granted target; the work runs in a coroutine."""
        return self._open_tunnel(dest_host, dest_port)

    async def _open_tunnel(self, dest_host: str, dest_port: int) -> Tunnel:
        # repr: the destination is the client's text and goes to the log.
        where = f"{dest_host!r}:{dest_port}"
        if len(self.tunnels) >= self._state.config.ssh.max_tunnels_per_connection:
            self._refuse_tunnel(
                where,
                "too many tunnels on this connection",
                asyncssh.OPEN_RESOURCE_SHORTAGE,
            )
        try:
            target, port = await self._locate(dest_host, dest_port)
            tunnel = await open_tunnel(
                target.host,
                port,
                self._state.config.ssh.connect_timeout,
                functools.partial(self._tunnel_closed, target),
            )
        except ConnectFailed as exc:
            self._refuse_tunnel(
                where, f"target {dest_host!r} {exc}", asyncssh.OPEN_CONNECT_FAILED
            )
        except BastionError as exc:
            self._refuse_tunnel(
                where, str(exc), asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
            )
        recorded = await self._bastion.record(
            "tunnel.opened",
            **self._about(),
            target=target.name,
            outcome="opened",
            port=dest_port,
        )
        if not recorded:
            tunnel.close("the audit trail cannot be written")
            self._refuse_tunnel(
                where, "the audit trail cannot be written", asyncssh.OPEN_CONNECT_FAILED
            )
        if self._closed:
            tunnel.close("the connection closed before the tunnel attached")
            self._refuse_tunnel(
                where, "the connection closed", asyncssh.OPEN_CONNECT_FAILED
            )
        self.tunnels.add(tunnel)
        self._log(
            logging.INFO, "Tunnel opened to %s (%s:%d)", target.name, target.host, port
        )

        return tunnel

    def _about(self) -> dict[str, Any]:
        """Who and what every audit event of this connection names."""
        return {
            "actor": self.login,
            "source": self.peer,
            "serial": self.serial,
            "key_id": self._key_id,
            "request_id": self.grant.request_id if self.grant else None,
        }

    @property
    def _key_id(self) -> str | None:
        return self.certificate.key_id if self.certificate else None

    async def _locate(self, dest_host: str, dest_port: int) -> tuple[Target, int]:
        """Return the granted target a client named, and the port to use.

        Deny by default: the only address ever connected to is the one
        the inventory holds for the granted target's name, whatever
        address or alias the client asks for.
        """
        grant = self.grant
        assert grant is not None
        grant = await self._bastion.find_grant(grant.serial)
        if grant.revoked:
            raise Refused("the certificate was revoked")
        if self.certificate and time.time() >= self.certificate.valid_before:
            raise Refused("the certificate expired: ask for a new one")
        if dest_host.lower() != grant.target.lower():
            raise await self._not_granted(dest_host, grant)
        if dest_port not in grant.ports:
            allowed = ", ".join(str(p) for p in grant.ports)
            raise Refused(
                f"port {dest_port} is not allowed on {grant.target!r} "
                f"(allowed: {allowed})"
            )
        target = await inventory.find_target(self._state, grant.target)
        # Port 22 means "the target's SSH port", wherever it listens.
        port = target.port if dest_port == 22 else dest_port
        if target.guest is not None:
            target = await self._reach_guest(target, port, grant)

        return target, port

    async def _reach_guest(
        self, target: Target, port: int, grant: access.Grant
    ) -> Target:
        """Return a guest target with its address, started if it must be.

        Deny by default: a guest that is not running is started only
        when the grant says it may be, and its node must answer.
        """
        guests = inventory.guest_inventory(self._state.config)
        guest = target.guest
        assert guests is not None and guest is not None
        if not guest.available:
            raise NodeOffline(
                f"node offline: node {guest.node!r} of target {target.name!r} "
                "does not answer; try again when it is back",
                guest.node,
            )
        status = guest.status
        if status != "running":
            # The cluster's list can lag; status/current is authoritative.
            current = await guests.client.guest_status(
                guest.node, guest.kind, guest.vmid
            )
            status = str(current.get("status") or status)
        if status == "running":
            address = await guests.address(guest)
        elif grant.may_start:
            address = await self._start_guest(guests, target, port)
        else:
            raise Refused(
                f"target {target.name!r} is {status} and this grant may not start it"
            )

        return dataclasses.replace(target, host=address)

    async def _start_guest(
        self, guests: GuestInventory, target: Target, port: int
    ) -> str:
        """Start a guest and wait, within proxmox.start_timeout, for ``port``."""
        assert target.guest is not None
        upids: list[str] = []

        def progress(stage: StartStage, detail: str) -> None:
            if stage is StartStage.STARTING:
                upids.append(detail)
            self._log(logging.INFO, "Guest %s: %s %s", target.name, stage, detail)

        began = time.monotonic()
        try:
            address = await guests.start_and_wait(
                target.guest, port=port, progress=progress
            )
        except BastionError as exc:
            upid = getattr(exc, "upid", None) or (upids[0] if upids else None)
            self._audit_guest("guest.start_failed", target, upid, str(exc))
            raise
        if upids:
            seconds = round(time.monotonic() - began, 1)
            self._audit_guest("guest.started", target, upids[0], seconds=seconds)

        return address

    def _audit_guest(
        self,
        kind: str,
        target: Target,
        upid: str | None,
        reason: str | None = None,
        **detail: Any,
    ) -> None:
        """Audit a guest start on behalf of this connection's holder."""
        self._bastion.audit(
            kind,
            **self._about(),
            target=target.name,
            reason=reason,
            outcome="failed" if reason else "started",
            upid=upid,
            node=target.node,
            vmid=target.vmid,
            **detail,
        )

    async def _not_granted(self, dest_host: str, grant: access.Grant) -> BastionError:
        try:
            await inventory.find_target(self._state, dest_host)
        except BastionError:
            return NotFound(
                f"unknown target {dest_host!r}: name a target, as granted: "
                f"{grant.target!r}"
            )
        return Refused(
            f"target {dest_host!r} is not granted to this certificate "
            f"(granted: {grant.target!r})"
        )

    def _refuse_tunnel(self, where: str, reason: str, code: int) -> Any:
        self._log(logging.WARNING, "Refused tunnel to %s: %s", where, reason)
        self._bastion.audit(
            "tunnel.refused",
            **self._about(),
            target=where,
            reason=reason,
            outcome="refused",
        )
        raise asyncssh.ChannelOpenError(code, reason)

    def _tunnel_closed(self, target: Target, tunnel: Tunnel, reason: str) -> None:
        self.tunnels.discard(tunnel)
        stats = tunnel.stats
        self._log(
            logging.INFO,
            "Tunnel to %s closed after %.1fs, %d bytes in, %d out: %s",
            target.name,
            stats.duration,
            stats.bytes_to_target,
            stats.bytes_from_target,
            reason,
        )
        self._bastion.audit(
            "tunnel.closed",
            **self._about(),
            target=target.name,
            reason=reason,
            outcome="closed",
            bytes_to_target=stats.bytes_to_target,
            bytes_from_target=stats.bytes_from_target,
            duration=round(stats.duration, 3),
        )


def _wrap_certificate_checks(
    conn: asyncssh.SSHServerConnection, owner: BastionConnection
) -> None:
    """Put the bastion's checks in front of asyncssh's, and keep both.

    asyncssh keeps no record of the certificate a client logged in with
    and checks ``valid_after`` with no skew. So, for this connection
    only: its public-key validation first asks the bastion (which
    refuses with a reason, or lets asyncssh run all of its own checks),
    and the window check on the one certificate object being validated
    allows the configured skew on its start. Integration tests cover
    both, because they touch asyncssh internals.
    """
    for name in ("validate_public_key", "_validate_openssh_certificate"):
        if not hasattr(conn, name):
            raise RuntimeError(
                f"asyncssh {asyncssh.__version__} has no {name}; "
                "jit-bastion needs asyncssh 2.24"
            )
    original_validate = conn.validate_public_key
    original_certificate = conn._validate_openssh_certificate
    skew = owner._bastion.rules.skew

    async def validate_public_key(
        username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> bool:
        if await owner.judge_offer(username, key_data):
            return False
        accepted = await original_validate(username, key_data, msg, signature)
        if accepted and msg:
            return await owner.accept_offer(key_data)
        if not accepted:
            owner.refused_by_asyncssh(username, key_data)
        return accepted

    async def validate_certificate(username: str, cert: Any) -> asyncssh.SSHKey | None:
        parsed = parse_certificate(cert.public_data)
        cert.validate = functools.partial(_validate_with_skew, parsed, skew)
        return await original_certificate(username, cert)

    conn.validate_public_key = validate_public_key  # type: ignore[method-assign]
    conn._validate_openssh_certificate = (  # type: ignore[method-assign]
        validate_certificate
    )


def _validate_with_skew(
    cert: Certificate, skew: int, cert_type: int, principal: str | None
) -> None:
    """asyncssh's certificate check, with a skew allowance on the start."""
    if cert.cert_type != CERT_TYPE_USER or cert_type != CERT_TYPE_USER:
        raise ValueError("Invalid certificate type")
    now = time.time()
    if now + skew < cert.valid_after:
        raise ValueError("Certificate not yet valid")
    if now >= cert.valid_before:
        raise ValueError("Certificate expired")
    if principal is not None and principal not in cert.principals:
        raise ValueError("Certificate principal mismatch")
