"""The benchmark in miniature, so that it cannot rot.

``scripts/bench --smoke`` runs every section with tiny sizes: a few MB
through each hop, a few tunnels, a few thousand audit events. This test
checks that it ran to the end and printed every row, each with figures
or a stated reason; it never judges a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netlab import IS_ROOT

REPO = Path(__file__).resolve().parents[1]

#: Every row the benchmark prints, by the start of its name, and whether
#: OpenSSH's jump host is measured beside the bastion.
ROWS = {
    "Tunnel throughput, upload": True,
    "Tunnel throughput, download": True,
    "Hop CPU per GB, upload": True,
    "Hop CPU per GB, download": True,
    "Connection setup p50": True,
    "Connection setup p95": True,
    "Hop CPU per connection": True,
    "Memory before the tunnels": True,
    "Memory with": True,
    "Idle CPU with": True,
    "4 tunnels streaming at once": True,
    "4 tunnels streaming, slowest": True,
    "Hop CPU per GB, 4 tunnels": True,
    "Certificate issuance via API p50": False,
    "Certificate issuance via API p95": False,
    "Certificate issuance via API, 4 clients": False,
    "Certificate issuance in-process p50": False,
    "Certificate issuance in-process p95": False,
    "Certificate issuance in-process, one at a time": False,
    "Target list, 50 guests, from cache": False,
    "Target list, 50 guests, after a refresh": False,
    "audit verify, 3,000 events": False,
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], str]:
    """Run ``python -m tests.bench --smoke`` once; its rows and its table."""
    if not IS_ROOT:
        pytest.skip("the benchmark needs root: network namespaces and sshd")
    rows = tmp_path_factory.mktemp("bench") / "rows.json"
    argv = [sys.executable, "-m", "tests.bench", "--smoke", "--json", str(rows)]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]

    return json.loads(rows.read_text()), result.stdout


def test_bench_smoke_prints_every_row(smoke: tuple[list[dict], str]) -> None:
    rows, table = smoke
    for prefix in ROWS:
        found = [row for row in rows if row["name"].startswith(prefix)]
        assert found, f"no row {prefix!r}"
        for row in found:
            assert f"| {row['name']} ({row['unit']}) |" in table


def test_bench_smoke_measures_both_hops_or_says_why(
    smoke: tuple[list[dict], str],
) -> None:
    rows, _ = smoke
    for row in rows:
        both = next(v for k, v in ROWS.items() if row["name"].startswith(k))
        if not row["figures"]:
            assert row["note"].startswith("not measured: "), row
            continue
        assert "jit-bastion" in row["figures"], row
        assert ("OpenSSH" in row["figures"]) == both, row


def test_bench_smoke_names_the_cipher_of_every_tunnel_row(
    smoke: tuple[list[dict], str],
) -> None:
    rows, _ = smoke
    tunnel_rows = [row for row in rows if ROWS[_prefix(row)]]
    ciphers = {row["cipher"] for row in tunnel_rows}
    assert "aes128-gcm@openssh.com" in ciphers
    assert "chacha20-poly1305@openssh.com (client default)" in ciphers


def _prefix(row: dict) -> str:
    return next(k for k in ROWS if row["name"].startswith(k))
