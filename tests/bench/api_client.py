"""Asks the API for certificates, from the client host, and times it.

``python -m tests.bench.api_client URL PEOPLE.json SEQUENTIAL PARALLEL``
posts one ``/api/v1/certificates`` request per person in PEOPLE.json
(name, password, TOTP secret, public key), each on a new HTTPS
connection as ``jit`` would make it: first SEQUENTIAL of them one after
another, then PARALLEL of them four at a time. Each person is used once,
because a TOTP step is accepted only once. It prints one JSON line with
the latencies of the sequential ones and the wall time of the parallel
ones.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyotp
import requests
import urllib3

WORKERS = 4


def issue(url: str, person: dict[str, str]) -> float:
    """One issuance with a fresh code; return its seconds."""
    # The enrolment spent the current step; the next one is also valid now.
    code = pyotp.TOTP(person["secret"]).at(time.time() + 30)
    body = {
        "username": person["name"],
        "password": person["password"],
        "code": code,
        "target": "web01",
        "reason": "benchmark of issuance",
        "public_key": person["public_key"],
    }
    started = time.monotonic()
    # verify=False: a bench in a private namespace against init's own
    # self-signed certificate, whose name is not the address used here.
    answer = requests.post(
        f"{url}/api/v1/certificates", json=body, verify=False, timeout=30
    )
    seconds = time.monotonic() - started
    if answer.status_code != 201:
        raise RuntimeError(f"issuance failed: {answer.status_code} {answer.text[:300]}")

    return seconds


def main(argv: list[str]) -> int:
    """``URL PEOPLE.json SEQUENTIAL PARALLEL``."""
    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
    url, people = argv[0], json.loads(Path(argv[1]).read_text())
    sequential, parallel = int(argv[2]), int(argv[3])
    latencies = [issue(url, person) for person in people[:sequential]]
    rest = people[sequential : sequential + parallel]
    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda person: issue(url, person), rest))
    result: dict[str, Any] = {
        "latencies": latencies,
        "parallel": len(rest),
        "parallel_seconds": time.monotonic() - started,
    }
    print(json.dumps(result), flush=True)

    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
