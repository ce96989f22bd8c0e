"""The refusal matrix: certificates made with ssh-keygen, offered to a real
OpenSSH sshd and to the bastion. The bastion must refuse everything sshd
refuses, and also what its own policy names: a lifetime over
``certificates.max_ttl``, a SHA-1 CA signature, a revoked or unknown
serial. The measured table goes into the README (or, until the README
has its markers, ``tests/refusal-matrix.md``); the test fails when the
table there differs from what it measured. ``JIT_UPDATE_README=1``
writes it instead.
"""

from __future__ import annotations

import difflib
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance import audit
from appliance.access import revoke
from appliance.inventory import add_static_target
from tests.audit_fixtures import bastion_config, direct_config, start_web01
from tests.harness import (
    ApplianceUnderTest,
    Client,
    SSHDTarget,
    cert_path,
    keygen,
    register_grant,
    sign,
)
from tests.netlab import IS_ROOT, Network

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs network namespaces")

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FALLBACK = Path(__file__).resolve().parent / "refusal-matrix.md"
START, END = "<!-- refusal-matrix:start -->", "<!-- refusal-matrix:end -->"

#: The one documented case where the bastion accepts what sshd refuses:
#: ``ssh.skew`` (60 s) allows a start a little in the future, for
#: replicas whose clocks differ; sshd allows none.
SKEW_ALLOWANCE = "starts 30 s from now (within ssh.skew)"


@dataclass(frozen=True)
class Case:
    """One certificate: how it is signed and what the bastion knows of it."""

    name: str
    principals: str | None = "{user}"
    validity: Callable[[int], str] = lambda now: f"0x{now - 60:x}:0x{now + 600:x}"
    options: tuple[str, ...] = ()
    key_type: tuple[str, int | None] = ("ed25519", None)
    ca: str = "user"
    algorithm: str | None = None
    host: bool = False
    grant: str | None = "{user}"
    revoked: bool = False
    policy: bool = False


def _at(start: int, end: int) -> Callable[[int], str]:
    """A window from ``start`` to ``end`` seconds relative to signing."""
    return lambda now: f"0x{now + start:x}:0x{now + end:x}"


MAX = 8 * 3600  # certificates.max_ttl by default; the CA backdates 60 s.
MANY = ",".join(f"p{i}" for i in range(199))
MOST = ",".join(f"p{i}" for i in range(255))

CASES = (
    Case("Ed25519 key, valid"),
    Case("ECDSA P-256 key", key_type=("ecdsa", 256)),
    Case("ECDSA P-384 key", key_type=("ecdsa", 384)),
    Case("ECDSA P-521 key", key_type=("ecdsa", 521)),
    Case("RSA 3072 key", key_type=("rsa", 3072)),
    Case("RSA 2048 key", key_type=("rsa", 2048)),
    Case("expired 1 s ago", validity=_at(-600, -1)),
    Case("expires 20 s from now", validity=_at(-60, 20)),
    Case("started 1 s ago", validity=_at(-1, 600)),
    Case(SKEW_ALLOWANCE, validity=_at(30, 600)),
    Case("starts 120 s from now", validity=_at(120, 600)),
    Case("lifetime = max_ttl + 60 s backdating", validity=_at(-60, MAX)),
    Case("lifetime 1 s over that", validity=_at(-60, MAX + 1), policy=True),
    Case("valid forever", validity=lambda now: "always:forever", policy=True),
    Case("no principals", principals=None),
    Case("wrong principal", principals="bob"),
    Case("principal '*'", principals="*"),
    Case("principal 'al*'", principals="al*"),
    Case("principal in upper case", principals="ALICE"),
    Case("principals: user and root", principals="{user},root"),
    Case("200 principals, user among them", principals=MANY + ",{user}"),
    Case("256 principals (OpenSSH's most), user last", principals=MOST + ",{user}"),
    Case("force-command", options=("force-command=/bin/true",)),
    Case("source-address matches", options=("source-address={client}/32",)),
    Case("source-address elsewhere", options=("source-address=192.0.2.0/24",)),
    Case("verify-required", options=("verify-required",)),
    Case("unknown critical option", options=("critical:x-unknown@example.com",)),
    Case("unknown extension", options=("extension:x-unknown@example.com",)),
    Case("no port forwarding", options=("no-port-forwarding",)),
    Case("no pty", options=("no-pty",)),
    Case("no extensions at all", options=("clear",)),
    Case("host certificate", host=True),
    Case("signed by an untrusted CA", ca="stranger"),
    Case("serial never issued", grant=None, policy=True),
    Case("serial issued to another user", grant="bob"),
    Case("serial revoked", revoked=True, policy=True),
    Case("RSA CA, rsa-sha2-512", ca="rsa", algorithm="rsa-sha2-512"),
    Case("RSA CA, rsa-sha2-256", ca="rsa", algorithm="rsa-sha2-256"),
    Case("RSA CA, ssh-rsa (SHA-1)", ca="rsa", algorithm="ssh-rsa", policy=True),
)


@dataclass
class Bench:
    """Both bastions (Ed25519 CA and RSA CA), the sshd, the client, the CAs."""

    appliance: ApplianceUnderTest
    rsa: ApplianceUnderTest
    target: SSHDTarget
    client: Client
    user: str
    cas: dict[str, Path] = field(default_factory=dict)
    configs: dict[str, Path] = field(default_factory=dict)


@pytest.fixture
def rsa_appliance(network: Network, tmp_path: Path) -> Iterator[ApplianceUnderTest]:
    """A second appliance whose user CA is an RSA key."""
    under_test = ApplianceUnderTest(network.host("bastion-rsa"), tmp_path / "rsa")
    under_test.directory.mkdir()
    under_test.init()
    ca = under_test.state_path / "ca" / "user_ca"
    ca.unlink()
    ca.with_suffix(".pub").unlink()
    keygen(ca, "rsa", 3072)
    yield under_test
    under_test.close()


@pytest.fixture
def bench(
    network: Network,
    appliance: ApplianceUnderTest,
    rsa_appliance: ApplianceUnderTest,
    client: Client,
    alice: str,
    tmp_path: Path,
) -> Iterator[Bench]:
    """An sshd trusting both user CAs, and both bastions started."""
    trusted = tmp_path / "trusted_user_cas"
    trusted.write_text(
        appliance.user_ca_file().read_text() + rsa_appliance.user_ca_file().read_text()
    )
    sshd = start_web01(network, appliance, tmp_path / "web01", trusted=trusted)
    address = sshd.host.address
    add_static_target(rsa_appliance.state.engine, "web01", address, sshd.port)
    for under_test in (appliance, rsa_appliance):
        # Every refusal here comes from one address: keep it from locking.
        under_test.start(web_lockout_failures="1000")
    cas = {
        "user": appliance.state_path / "ca" / "user_ca",
        "rsa": rsa_appliance.state_path / "ca" / "user_ca",
        "stranger": keygen(tmp_path / "stranger_ca"),
    }
    configs = {
        "user": bastion_config(appliance, client),
        "rsa": bastion_config(rsa_appliance, client),
    }
    yield Bench(appliance, rsa_appliance, sshd, client, alice, cas, configs)
    sshd.stop()


def _make(bench: Bench, number: int, case: Case, key: Path) -> int:
    """Sign the certificate of a case, just before use; register its grant."""
    serial = 9000 + number
    fill = {"user": bench.user, "client": bench.client.host.address}
    options = tuple(option.format(**fill) for option in case.options)
    sign(
        bench.cas[case.ca],
        key,
        principals=case.principals.format(**fill) if case.principals else None,
        validity=case.validity(int(time.time())),
        serial=serial,
        options=options,
        key_id=f"{bench.user}/case{number:02d}",
        host=case.host,
        algorithm=case.algorithm,
    )
    appliance = bench.rsa if case.ca == "rsa" else bench.appliance
    if case.grant:
        register_grant(appliance, serial, case.grant.format(**fill), "web01")
    if case.revoked:
        revoke(appliance.state, serial, by="matrix")
    return serial


def _measure(bench: Bench, number: int, case: Case) -> Row:
    """Make a case's key and certificate and offer it to both servers."""
    key = keygen(bench.client.directory / f"case{number:02d}", *case.key_type)
    serial = _make(bench, number, case, key)
    by_sshd = _offer_sshd(bench, key)
    return Row(number, case, serial, by_sshd, _offer_bastion(bench, case, key))


def _offer_sshd(bench: Bench, key: Path) -> bool:
    """Log in to the sshd straight with the certificate."""
    config = direct_config(bench.client, bench.target, key)
    return bench.client.ssh(config, "web01", "true").returncode == 0


def _offer_bastion(bench: Bench, case: Case, key: Path) -> bool:
    """Open a tunnel through the bastion that trusts the case's CA."""
    appliance = bench.rsa if case.ca == "rsa" else bench.appliance
    config = bench.configs["rsa" if case.ca == "rsa" else "user"]
    argv = ["ssh", "-F", str(config), "-i", str(key)]
    argv += ["-o", f"CertificateFile={cert_path(key)}", "-W", "web01:22"]
    result = bench.client.host.run([*argv, appliance.host.name], 30, input="")
    return result.returncode == 0 and result.stdout.startswith("SSH-2.0-OpenSSH")


def _reasons(bench: Bench) -> dict[int, str]:
    """The bastion's recorded refusal reason for each serial."""
    reasons = {}
    for appliance in (bench.appliance, bench.rsa):
        events = audit.read_events(appliance.state.engine, kind="auth.refused")
        for event in events:
            if "serial" in event:
                reasons.setdefault(int(event["serial"]), str(event["reason"]))
    return reasons


def _tidy(reason: str, bench: Bench) -> str:
    """A reason without times, serials, addresses or the login, cut short."""
    reason = re.sub(r"\d{4}-\d\d-\d\dT[\d:]+Z", "<time>", reason)
    reason = reason.replace(bench.client.host.address, "<client>")
    user = bench.user
    reason = re.sub(r"\b9\d{3}\b", "<serial>", reason)
    reason = reason.replace(repr(user), "'alice'").replace("|", "/")
    return reason if len(reason) <= 72 else reason[:69] + "..."


def _verdict(accepted: bool) -> str:
    return "accepted" if accepted else "**refused**"


@dataclass(frozen=True)
class Row:
    """What one certificate met at each server."""

    number: int
    case: Case
    serial: int
    by_sshd: bool
    by_bastion: bool


def _table(bench: Bench, rows: list[Row]) -> str:
    """The Markdown table of the measured rows."""
    reasons = _reasons(bench)
    lines = [
        "| # | certificate | OpenSSH sshd | jit-bastion | the bastion's reason |",
        "| ---: | --- | --- | --- | --- |",
    ]
    for row in rows:
        reason = _tidy(reasons.get(row.serial, NOT_OFFERED), bench)
        lines.append(
            f"| {row.number} | {row.case.name} | {_verdict(row.by_sshd)} | "
            f"{_verdict(row.by_bastion)} | {'' if row.by_bastion else reason} |"
        )
    return "\n".join(lines) + "\n"


NOT_OFFERED = "ssh offers no host certificate for user auth, only its plain key"


def test_bastion_refuses_at_least_what_sshd_refuses(bench: Bench) -> None:
    with ThreadPoolExecutor(4) as pool:
        numbers = range(1, len(CASES) + 1)
        rows = list(pool.map(lambda n: _measure(bench, n, CASES[n - 1]), numbers))
    time.sleep(0.5)

    _compare_or_write(_table(bench, rows))

    for row in rows:
        if row.case.name != SKEW_ALLOWANCE:
            assert row.by_sshd or not row.by_bastion, f"bastion took {row.case.name!r}"
        if row.case.policy:
            assert not row.by_bastion, f"bastion accepted {row.case.name!r}"
    assert rows[0].by_sshd and rows[0].by_bastion, "the valid certificate was refused"


def _compare_or_write(table: str) -> None:
    """Write the table where it belongs, or fail when it differs there."""
    block = f"{START}\n{table}{END}"
    path = README if README.exists() and START in README.read_text() else FALLBACK
    text = path.read_text() if path.exists() else f"{START}\n{END}\n"
    updated = re.sub(
        re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S
    )
    if os.environ.get("JIT_UPDATE_README") == "1":
        path.write_text(updated)
        return
    if updated != text:
        diff = "".join(
            difflib.unified_diff(
                text.splitlines(True), updated.splitlines(True), str(path), "measured"
            )
        )
        pytest.fail(
            f"the refusal matrix in {path.name} differs from what was measured "
            f"(JIT_UPDATE_README=1 rewrites it):\n{diff}"
        )
