"""The link to the Proxmox VE API: proxmoxer's https backend with an API token.

proxmoxer is synchronous, so every call runs in a worker thread of this
module's own pool and is bounded by the configured timeout: a stalled
cluster never blocks the event loop that carries other users' tunnels.
Errors come out as :class:`~appliance.errors.ProxmoxError`, one class per
thing an operator must fix: ``APIError`` (``TokenRejected`` for 401,
``PrivilegeMissing`` for 403), ``NodeOffline``, ``TLSFailure`` and
``APIUnreachable``. They live in :mod:`appliance.errors` with the rest of
the tree and are importable from here too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import stat
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from proxmoxer import ProxmoxAPI, ResourceException

from .config import ProxmoxSection
from .errors import APIError as APIError
from .errors import APIUnreachable as APIUnreachable
from .errors import ConfigError, ProxmoxError
from .errors import NodeOffline as NodeOffline
from .errors import PrivilegeMissing as PrivilegeMissing
from .errors import TLSFailure as TLSFailure
from .errors import TokenRejected as TokenRejected
from .secret import Secret

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Guest kinds as they appear in API paths and in /cluster/resources.
GUEST_KINDS = ("qemu", "lxc")

#: Privileges the token needs; the guest agent one changed name in PVE 9.
BASE_PRIVILEGES = ("VM.Audit", "VM.PowerMgmt")
AGENT_PRIVILEGE = {8: "VM.Monitor", 9: "VM.GuestAgent.Audit"}

DEFAULT_PORT = 8006
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9.\-_]+")
_USER = re.compile(r"[^\s:/@!=]+")
_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I
)
_PERMISSION = re.compile(r"\((?P<path>/[^,]*),\s*(?P<privilege>[^)]+)\)")
_NODE_PATH = re.compile(r"^nodes/(?P<node>[^/]+)/")
# proxmoxer logs request bodies at INFO and whole responses at DEBUG.
_PROXMOXER_LOGGERS = ("proxmoxer", "proxmoxer.core", "proxmoxer.backends.https")


@dataclass(frozen=True)
class TokenId:
    """A Proxmox API token id, ``user@realm!tokenname``."""

    user: str
    realm: str
    name: str

    @property
    def userid(self) -> str:
        """The token's owner, ``user@realm``."""
        return f"{self.user}@{self.realm}"

    def __str__(self) -> str:
        return f"{self.userid}!{self.name}"

    @classmethod
    def parse(cls, text: str) -> TokenId:
        """Parse ``user@realm!tokenname``; raise ConfigError naming the bad part.

        The message never repeats what follows the ``!``: a secret pasted
        there by mistake must not reach a log.
        """
        where = "proxmox.token_id"
        if "=" in text:
            raise ConfigError(
                f"{where} contains '=': it takes user@realm!tokenname only; "
                "the secret goes in proxmox.token_secret_file"
            )
        if text.count("!") != 1:
            raise ConfigError(
                f"{where} has {text.count('!')} '!' where user@realm!tokenname "
                "has exactly one"
            )
        userid, _, name = text.partition("!")
        user, at, realm = userid.rpartition("@")
        if not at or _USER.fullmatch(user) is None:
            raise ConfigError(
                f"{where}: the user before '@' in {userid!r} is missing or "
                "malformed; write user@realm!tokenname, e.g. bastion@pve!jit"
            )
        if _NAME.fullmatch(realm) is None:
            raise ConfigError(
                f"{where}: the realm in {userid!r} is missing or malformed "
                "(pve or pam, for example)"
            )
        if _UUID.fullmatch(name):
            raise ConfigError(
                f"{where}: the token name after '!' looks like a token secret "
                "(a UUID): write the token's name there, e.g. jit"
            )
        if _NAME.fullmatch(name) is None:
            raise ConfigError(
                f"{where}: the token name after '!' is missing or malformed: "
                "it starts with a letter and holds letters, digits, '.', '-', '_'"
            )

        return cls(user, realm, name)


@dataclass(frozen=True)
class ClusterCheck:
    """What ``proxmox check`` reports: the API version and missing privileges."""

    version: str
    release: str
    needed: tuple[str, ...]
    missing: tuple[str, ...]


def needed_privileges(release: str) -> tuple[str, ...]:
    """Return the privileges the token needs on a cluster of ``release``."""
    major = int(release.split(".")[0]) if release[:1].isdigit() else 9
    agent = AGENT_PRIVILEGE[8] if major < 9 else AGENT_PRIVILEGE[9]

    return (*BASE_PRIVILEGES, agent)


def read_token_secret(section: ProxmoxSection) -> Secret:
    """Return the token secret, inline or from ``token_secret_file``."""
    if section.token_secret and section.token_secret_file:
        raise ConfigError(
            "proxmox.token_secret and proxmox.token_secret_file are both "
            "set: keep only one (the file is safer)"
        )
    if not section.token_secret_file:
        if not section.token_secret:
            raise ConfigError(
                "proxmox.token_secret_file is empty: name the file holding "
                "the API token's secret"
            )
        return section.token_secret

    return _read_secret_file(Path(section.token_secret_file))


def _read_secret_file(path: Path) -> Secret:
    """Read a token secret from ``path``; warn when others may read it."""
    try:
        text = path.read_text().strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(
            f"proxmox.token_secret_file: cannot read {str(path)!r}: {exc.strerror}"
        ) from None
    if not text:
        raise ConfigError(f"proxmox.token_secret_file: {str(path)!r} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s is readable by other users; chmod 600 it", path)

    return Secret(text)


def read_verify(value: str | bool) -> bool | str:
    """Turn ``proxmox.verify_tls`` into proxmoxer's ``verify_ssl``."""
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if not Path(text).is_file():
        raise ConfigError(
            f"proxmox.verify_tls: {text!r} is neither true, false nor a CA "
            "file (on a node, /etc/pve/pve-root-ca.pem)"
        )

    return text


def parse_api_url(url: str) -> tuple[str, int]:
    """Return host and port of ``https://host[:port]``."""
    parts = urlsplit(url.strip())
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(
            f"proxmox.url: {url!r} is not https://host[:port], "
            "e.g. https://pve1.example:8006"
        )
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError(f"proxmox.url: {url!r} has a bad port") from None

    return parts.hostname, port


class ProxmoxClient:
    """The Proxmox VE API through one API token, every call in a worker thread.

    ``timeout`` bounds connecting and each wait for data; a whole call
    gives up after twice that. Use the ``async`` methods from the event
    loop and :func:`run_sync` from synchronous code such as the CLI.
    """

    def __init__(
        self,
        url: str,
        token_id: str,
        token_secret: Secret,
        *,
        verify: bool | str = True,
        timeout: float = 5.0,
        workers: int = 8,
    ) -> None:
        host, port = parse_api_url(url)
        self.token = TokenId.parse(token_id)
        if not token_secret:
            raise ConfigError(f"the secret of API token {self.token} is empty")
        if verify is False:
            logger.warning(
                "proxmox.verify_tls is false: the certificate of %s is not "
                "checked, so anyone on the path can take the API token; set "
                "it to the CA file instead",
                url,
            )
        self.url = f"https://{f'[{host}]' if ':' in host else host}:{port}"
        self.timeout = timeout
        for name in _PROXMOXER_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        self._api = ProxmoxAPI(
            host,
            port=port,
            user=self.token.userid,
            token_name=self.token.name,
            token_value=token_secret.reveal(),
            verify_ssl=verify,
            timeout=timeout,
        )
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="proxmox")

    @classmethod
    def from_config(cls, section: ProxmoxSection) -> ProxmoxClient:
        """Build a client from the ``[proxmox]`` section."""
        if not section.url:
            raise ConfigError("proxmox.url is empty: Proxmox is not configured")
        parse_api_url(section.url)

        return cls(
            section.url,
            section.token_id,
            read_token_secret(section),
            verify=read_verify(section.verify_tls),
            timeout=section.timeout,
        )

    def __repr__(self) -> str:
        return f"ProxmoxClient({self.url!r}, token={str(self.token)!r})"

    def close(self) -> None:
        """Stop the worker threads and drop pooled connections."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        # proxmoxer has no close(); its requests session lives in _store.
        self._api._store["session"].close()

    async def request(self, method: str, path: str, /, **params: Any) -> Any:
        """Call ``method path`` in a worker thread; return the reply's ``data``."""
        future = self._executor.submit(self._send, method, path, params)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), 2 * self.timeout)
        except TimeoutError:
            raise self._timed_out(method, path) from None

    async def version(self) -> dict[str, Any]:
        """GET /version: ``version``, ``release`` and ``repoid``."""
        reply: dict[str, Any] = await self.request("GET", "version")
        return reply

    async def nodes(self) -> list[dict[str, Any]]:
        """GET /nodes: each node with its ``status`` (online, offline)."""
        reply: list[dict[str, Any]] = await self.request("GET", "nodes")
        return reply

    async def cluster_guests(self) -> list[dict[str, Any]]:
        """GET /cluster/resources?type=vm: every guest the token may audit."""
        reply: list[dict[str, Any]] = await self.request(
            "GET", "cluster/resources", type="vm"
        )
        return reply

    async def guest_status(self, node: str, kind: str, vmid: int) -> dict[str, Any]:
        """GET the authoritative ``status/current`` of one guest."""
        reply: dict[str, Any] = await self.request(
            "GET", _guest_path(node, kind, vmid, "status/current")
        )
        return reply

    async def guest_config(self, node: str, kind: str, vmid: int) -> dict[str, Any]:
        """GET one guest's configuration (``ipconfigN``, ``netN``, ...)."""
        reply: dict[str, Any] = await self.request(
            "GET", _guest_path(node, kind, vmid, "config")
        )
        return reply

    async def start_guest(self, node: str, kind: str, vmid: int) -> str:
        """POST ``status/start``; return the task's UPID."""
        upid: str = await self.request(
            "POST", _guest_path(node, kind, vmid, "status/start")
        )
        return upid

    async def task_status(self, node: str, upid: str) -> dict[str, Any]:
        """GET a task's ``status`` (running, stopped) and ``exitstatus``."""
        reply: dict[str, Any] = await self.request(
            "GET", f"nodes/{node}/tasks/{upid}/status"
        )
        return reply

    async def agent_interfaces(self, node: str, vmid: int) -> list[dict[str, Any]]:
        """GET the QEMU guest agent's ``network-get-interfaces`` result."""
        reply = await self.request(
            "GET", _guest_path(node, "qemu", vmid, "agent/network-get-interfaces")
        )
        result: list[dict[str, Any]] = (reply or {}).get("result") or []
        return result

    async def container_interfaces(
        self, node: str, vmid: int
    ) -> list[dict[str, Any]] | None:
        """GET an LXC container's interfaces; None while it is stopped."""
        reply: list[dict[str, Any]] | None = await self.request(
            "GET", _guest_path(node, "lxc", vmid, "interfaces")
        )
        return reply

    async def permissions(self) -> dict[str, dict[str, int]]:
        """GET /access/permissions: the token's privileges by ACL path."""
        reply: dict[str, dict[str, int]] = await self.request(
            "GET", "access/permissions"
        )
        return reply

    async def check(self) -> ClusterCheck:
        """Reach the API; report its version and the privileges the token lacks."""
        version = await self.version()
        release = str(version.get("release", ""))
        needed = needed_privileges(release)
        held: set[str] = set()
        for privileges in (await self.permissions()).values():
            held.update(privileges)
        missing = tuple(p for p in needed if p not in held)

        return ClusterCheck(str(version.get("version", "")), release, needed, missing)

    def _send(self, method: str, path: str, params: dict[str, Any]) -> Any:
        """Do one call with proxmoxer; runs in a worker thread."""
        resource = self._api(path)
        try:
            if method == "POST":
                reply = resource.post(**params)
            else:
                reply = resource.get(**params)
        except ResourceException as exc:
            raise self._answered(method, path, exc) from None
        except requests.exceptions.RequestException as exc:
            raise self._transport(method, path, exc) from None
        logger.debug("%s %s answered", method, path)

        return reply

    def _answered(self, method: str, path: str, exc: ResourceException) -> ProxmoxError:
        """Map an HTTP error from the API to its clear error."""
        status, reason = int(exc.status_code), str(exc.content)
        call = f"{method} /{path}"
        if status == 401:
            return TokenRejected(
                f"Proxmox refused API token {str(self.token)!r} (401 {reason}): "
                "check proxmox.token_id and the secret",
                status,
                reason,
            )
        if status == 403:
            return self._forbidden(call, reason)
        if status == 595:
            node = _node_of(path)
            return NodeOffline(
                f"node offline: Proxmox cannot reach node {node!r} "
                f"({call}: 595 {reason})",
                node,
            )

        return APIError(
            f"Proxmox answered {call} with {status} {reason}", status, reason
        )

    def _forbidden(self, call: str, reason: str) -> PrivilegeMissing:
        """Name the privilege a 403 says the token lacks."""
        match = _PERMISSION.search(reason)
        privilege = match["privilege"] if match else "unknown"
        path = match["path"] if match else "?"

        return PrivilegeMissing(
            f"API token {str(self.token)!r} lacks {privilege} on {path} "
            f"({call}: 403 {reason}); grant it with scripts/pve-create-token.sh",
            reason,
            privilege,
            path,
        )

    def _transport(
        self, method: str, path: str, exc: requests.exceptions.RequestException
    ) -> ProxmoxError:
        """Map a network failure to its clear error."""
        if isinstance(exc, requests.exceptions.Timeout):
            return self._timed_out(method, path)
        if isinstance(exc, requests.exceptions.SSLError):
            return TLSFailure(
                f"TLS verification of {self.url} failed ({_root_cause(exc)}): "
                "set proxmox.verify_tls to the CA file that signed the API's "
                "certificate (on a node, /etc/pve/pve-root-ca.pem)"
            )

        return APIUnreachable(
            f"cannot reach the Proxmox API at {self.url} ({_root_cause(exc)}): "
            "check proxmox.url and that pveproxy runs"
        )

    def _timed_out(self, method: str, path: str) -> NodeOffline:
        """The error for a call that got no answer in time."""
        node = _node_of(path)
        what = f"node {node!r}" if node else "the cluster"

        return NodeOffline(
            f"node offline or API stalled: {method} /{path} got no answer "
            f"from {what} within {self.timeout:g} s",
            node,
        )


def run_sync(call: Coroutine[Any, Any, T]) -> T:
    """Run one client or inventory coroutine from synchronous code (the CLI)."""
    return asyncio.run(call)


def _guest_path(node: str, kind: str, vmid: int, rest: str) -> str:
    """Return ``nodes/{node}/{kind}/{vmid}/{rest}`` for a known guest kind."""
    if kind not in GUEST_KINDS:
        raise ValueError(f"{kind!r} is not a guest kind (qemu, lxc)")

    return f"nodes/{node}/{kind}/{int(vmid)}/{rest}"


def _node_of(path: str) -> str:
    """Return the node a ``nodes/{node}/...`` path addresses, else ''."""
    match = _NODE_PATH.match(path)
    return match["node"] if match else ""


def _root_cause(exc: BaseException) -> str:
    """Return the innermost reason of a requests/urllib3 error, in words."""
    while True:
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException) and exc.args:
            inner = exc.args[0]
        if not isinstance(inner, BaseException):
            break
        exc = inner
    verify_message = getattr(exc, "verify_message", None)
    if verify_message:
        return str(verify_message)
    if isinstance(exc.__context__, OSError) and exc.__context__.strerror:
        return exc.__context__.strerror

    return str(exc)
