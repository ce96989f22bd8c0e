"""The relay between an SSH ``direct-tcpip`` channel and a target's port.

asyncssh's own forwarding can lose the first bytes a target sends (its
SSH banner) when anything awaits before the channel attaches, and can
leave a channel open when the target writes and closes at once. This
relay avoids both: it opens the TCP connection itself, stops reading
from the target until the channel is attached, and only then lets bytes
flow. Flow control is wired both ways (a full channel window pauses
reading from the target; a full socket buffer pauses the channel), and
an EOF on either side is passed on as a half-close.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncssh

logger = logging.getLogger(__name__)


class ConnectFailed(Exception):
    """The target could not be reached; the message says how."""


@dataclass
class TunnelStats:
    """What a finished tunnel moved, for the audit trail."""

    bytes_to_target: int = 0
    bytes_from_target: int = 0
    opened: float = 0.0
    closed: float = 0.0

    @property
    def duration(self) -> float:
        """Seconds the tunnel was open."""
        return max(0.0, (self.closed or time.monotonic()) - self.opened)


class _TargetProtocol(asyncio.Protocol):
    """The TCP side: hands everything it gets to the tunnel."""

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        # Nothing is read until the SSH channel exists to take it.
        transport.pause_reading()
        self._tunnel.target_connected(transport)

    def data_received(self, data: bytes) -> None:
        self._tunnel.target_data(data)

    def eof_received(self) -> bool:
        self._tunnel.target_eof()
        return True

    def pause_writing(self) -> None:
        self._tunnel.target_buffer_full(True)

    def resume_writing(self) -> None:
        self._tunnel.target_buffer_full(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._tunnel.target_lost(exc)


class Tunnel(asyncssh.SSHTCPSession[bytes]):
    """One relayed connection: an SSH channel joined to a TCP stream."""

    def __init__(self, on_close: Callable[[Tunnel, str], None]) -> None:
        self.stats = TunnelStats(opened=time.monotonic())
        self.close_reason = "closed by client"
        self._on_close = on_close
        self._chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._transport: asyncio.Transport | None = None
        self._target_gone = False
        self._eof_from_client = False
        self._eof_from_target = False
        self._finished = False

    # The TCP side.

    def target_connected(self, transport: asyncio.Transport) -> None:
        """Keep the target's transport; it stays paused until attach."""
        self._transport = transport

    def target_data(self, data: bytes) -> None:
        """Pass bytes from the target into the channel."""
        assert self._chan is not None
        self.stats.bytes_from_target += len(data)
        self._chan.write(data)

    def target_eof(self) -> None:
        """The target will send no more: half-close the channel."""
        self._eof_from_target = True
        if self._chan is not None:
            self._chan.write_eof()
        self._close_when_both_done()

    def target_buffer_full(self, full: bool) -> None:
        """Stop taking channel data while the target's buffer is full."""
        if self._chan is None:
            return
        if full:
            self._chan.pause_reading()
        else:
            self._chan.resume_reading()

    def target_lost(self, exc: Exception | None) -> None:
        """The TCP connection closed: close the channel after its data."""
        self._target_gone = True
        if exc is not None:
            self.close_reason = f"target connection failed: {exc}"
        elif self._eof_from_target:
            self.close_reason = "closed by target"
        if self._chan is not None:
            self._chan.close()

    # The SSH side.

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        """The channel is attached: start reading from the target."""
        self._chan = chan
        if self._eof_from_target:
            chan.write_eof()
        if self._target_gone:
            chan.close()
        elif self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Pass bytes from the client to the target."""
        assert self._transport is not None
        self.stats.bytes_to_target += len(data)
        self._transport.write(data)

    def eof_received(self) -> bool:
        """The client will send no more: half-close the TCP stream."""
        self._eof_from_client = True
        if self._transport is not None and self._transport.can_write_eof():
            self._transport.write_eof()
        self._close_when_both_done()
        return True

    def pause_writing(self) -> None:
        """The channel's window is full: stop reading from the target."""
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        """The channel has room again."""
        if self._transport is not None and not self._target_gone:
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel closed: close the TCP stream and report once."""
        if exc is not None and self.close_reason == "closed by client":
            self.close_reason = str(exc) or type(exc).__name__
        if self._transport is not None:
            self._transport.close()
        self._finish()

    @property
    def attached(self) -> bool:
        """Whether the SSH channel has taken this tunnel."""
        return self._chan is not None

    def close(self, reason: str) -> None:
        """Close the tunnel from the bastion's side, saying why."""
        self.close_reason = reason
        if self._chan is not None:
            self._chan.close()
        if self._transport is not None:
            self._transport.abort()
        if self._chan is None:
            # No channel will ever report this tunnel's end: do it here.
            self._finish()

    def _close_when_both_done(self) -> None:
        """Close the channel once both directions have ended."""
        if self._eof_from_client and self._eof_from_target and self._chan:
            self._chan.close()

    def _finish(self) -> None:
        """Report the tunnel's end exactly once."""
        if self._finished:
            return
        self._finished = True
        self.stats.closed = time.monotonic()
        self._on_close(self, self.close_reason)


async def open_tunnel(
    host: str,
    port: int,
    timeout: float,
    on_close: Callable[[Tunnel, str], None],
) -> Tunnel:
    """Connect to ``host:port`` and return a tunnel ready to attach.

    Raises :class:`ConnectFailed` with a message that tells refused,
    timed out and unreachable apart.
    """
    loop = asyncio.get_running_loop()
    tunnel = Tunnel(on_close)
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: _TargetProtocol(tunnel), host, port),
            timeout,
        )
    except TimeoutError:
        raise ConnectFailed(f"did not answer within {timeout:g}s") from None
    except ConnectionRefusedError:
        raise ConnectFailed(f"refused the connection on port {port}") from None
    except OSError as exc:
        raise ConnectFailed(_describe_os_error(exc)) from None

    return tunnel


def _describe_os_error(exc: OSError) -> str:
    """Turn a connect error into words an operator can act on."""
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"is unreachable ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno is None:
        return f"could not be resolved or reached ({exc})"

    return f"could not be reached ({exc.strerror or exc})"
