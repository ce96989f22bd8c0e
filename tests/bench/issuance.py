"""Certificate issuance: through the API, and in-process for comparison.

The API path is what a person's ``jit`` runs: HTTPS to ``serve web``
(gunicorn, the configured number of workers) in the bastion's host,
password and TOTP checked (one argon2id verify each), policy, the CA's
signature, the database. In-process issuance is the same call without
the login, HTTP and TLS, so the two rows show where the time goes.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import access, identity
from appliance.state import State

from .lab import REPO, Lab
from .report import Figure, Row, at_most
from .tunnels import percentile

NO_API = "not measured: API not present"


@dataclass(frozen=True)
class IssuanceSettings:
    """How many certificates each way."""

    in_process: int = 100
    sequential: int = 30
    parallel: int = 30
    verifies: int = 5
    workers: int | None = None  # None: the configured number


def argon2_cost(verifies: int) -> str:
    """The password hasher's parameters and one verify's time here."""
    hasher = identity._hasher
    digest = hasher.hash("benchmark password")
    times = []
    for _ in range(verifies):
        started = time.monotonic()
        hasher.verify(digest, "benchmark password")
        times.append((time.monotonic() - started) * 1000)

    return (
        f"argon2id t={hasher.time_cost}, m={hasher.memory_cost // 1024} MiB, "
        f"p={hasher.parallelism}: one verify {statistics.median(times):.0f} ms"
    )


def api_present() -> bool:
    """Whether the web UI serves POST /api/v1/certificates."""
    try:
        from webui import api
    except ImportError:
        return False

    return api.blueprint.url_prefix == "/api/v1" and hasattr(api, "certificates")


def measure_issuance(
    lab: Lab, settings: IssuanceSettings, candidate: Path | None = None
) -> list[Row]:
    """Issuance rows: the API's (or why not) and in-process.

    With a ``candidate`` checkout, its web UI answers the same requests
    after this one's, for people enrolled with its own password hasher.
    """
    if not api_present():
        return _missing_api_rows() + _in_process_rows(lab, settings)
    checkouts = {"jit-bastion": None, "candidate": candidate}
    runs = {
        label: _api_run(lab, settings, label, checkout)
        for label, checkout in checkouts.items()
        if label == "jit-bastion" or checkout
    }

    return _api_rows(runs, settings) + _in_process_rows(lab, settings)


def _missing_api_rows() -> list[Row]:
    return [
        Row("Certificate issuance via API p50", "ms", note=NO_API),
        Row("Certificate issuance via API p95", "ms", goal=at_most(250), note=NO_API),
        Row("Certificate issuance via API, 4 clients", "per s", note=NO_API),
    ]


def _in_process_rows(lab: Lab, settings: IssuanceSettings) -> list[Row]:
    state = State.open(lab.appliance.state_path)
    keys = [_public_key() for _ in range(settings.in_process)]
    times = []
    for key in keys:
        started = time.monotonic()
        access.issue_certificate(
            state,
            user=lab.person,
            target="web01",
            reason="benchmark of issuance",
            public_key=key,
        )
        times.append((time.monotonic() - started) * 1000)
    state.engine.dispose()
    note = "no login: policy, CA signature, database"

    return [
        Row(
            "Certificate issuance in-process p50",
            "ms",
            "-",
            {"jit-bastion": Figure.of(times)},
            note=note,
        ),
        Row(
            "Certificate issuance in-process p95",
            "ms",
            "-",
            {"jit-bastion": Figure(percentile(times, 95))},
        ),
        Row(
            "Certificate issuance in-process, one at a time",
            "per s",
            "-",
            {"jit-bastion": Figure(1000 * len(times) / sum(times))},
        ),
    ]


def _public_key() -> str:
    from tests.web.people import public_key_line

    return public_key_line()


@dataclass(frozen=True)
class APIRun:
    """One web UI's answers: latencies one at a time, rate four at a time."""

    latencies: list[float]
    rate: float
    cost: str
    workers: str


def _api_run(
    lab: Lab, settings: IssuanceSettings, label: str, checkout: Path | None
) -> APIRun:
    from tests.web.server import WebUnderTest

    count = settings.sequential + settings.parallel
    enrolled = _enroll(lab, count, label, checkout, settings.verifies)
    owner = lab.candidate if checkout and lab.candidate else lab.appliance
    host = owner.host
    web = WebUnderTest(owner, host, host.free_port(8443))
    workers = str(settings.workers or lab.appliance.state.config.web.workers)
    web.start(web_workers=workers)
    try:
        result = _run_client(lab, web.url, enrolled["people"], settings)
    finally:
        web.stop()
    latencies = [s * 1000 for s in result["latencies"]]
    rate = result["parallel"] / result["parallel_seconds"]

    return APIRun(latencies, rate, enrolled["cost"], workers)


def _api_rows(runs: dict[str, APIRun], settings: IssuanceSettings) -> list[Row]:
    mine = runs["jit-bastion"]
    label = f"TLS; {mine.cost}"
    note = ""
    if "candidate" in runs:
        note = f"candidate: {runs['candidate'].cost}"

    return [
        Row(
            "Certificate issuance via API p50",
            "ms",
            label,
            {k: Figure.of(run.latencies) for k, run in runs.items()},
            note=note,
        ),
        Row(
            "Certificate issuance via API p95",
            "ms",
            label,
            {k: Figure(percentile(run.latencies, 95)) for k, run in runs.items()},
            at_most(250),
        ),
        Row(
            f"Certificate issuance via API, 4 clients, {mine.workers} workers",
            "per s",
            label,
            {k: Figure(run.rate) for k, run in runs.items()},
        ),
    ]


def _enroll(
    lab: Lab, count: int, label: str, checkout: Path | None, verifies: int
) -> dict[str, Any]:
    """Enroll ``count`` people with the checkout's own password hasher.

    A process of its own imports the appliance from ``checkout`` (or this
    one), so each web UI verifies hashes made with its own parameters.
    """
    prefix = "bench" if label == "jit-bastion" else "cand"
    paths = [str(checkout)] if checkout else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(REPO)])}
    argv = [sys.executable, "-m", "tests.bench.issuance", "enroll"]
    argv += [str(lab.appliance.state_path), prefix, str(count), str(verifies)]
    result = subprocess.run(
        argv, cwd=lab.directory, env=env, capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        raise RuntimeError(f"enrolling people failed:\n{result.stderr[-2000:]}")
    enrolled: dict[str, Any] = json.loads(result.stdout)

    return enrolled


def enroll_people(state_path: Path, prefix: str, count: int) -> list[dict[str, str]]:
    """Create, invite and enroll people with this process's hasher."""
    from tests.web.people import enroll_person

    state = State.open(state_path)
    people = []
    for number in range(count):
        person = enroll_person(state, f"{prefix}{number:04d}", time.time)
        people.append(
            {
                "name": person.name,
                "password": person.password,
                "secret": person.secret,
                "public_key": _public_key(),
            }
        )
    state.engine.dispose()

    return people


def _run_client(
    lab: Lab, url: str, people: list[dict[str, str]], settings: IssuanceSettings
) -> dict[str, float]:
    path = lab.directory / "client" / "api-people.json"
    path.write_text(json.dumps(people))
    path.chmod(0o600)
    argv = [sys.executable, "-m", "tests.bench.api_client", url, str(path)]
    argv += [str(settings.sequential), str(settings.parallel)]
    result = lab.client.run(argv, timeout=600, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"the API client failed:\n{result.stderr[-2000:]}")
    answer: dict[str, float] = json.loads(result.stdout)

    return answer


def main(argv: list[str]) -> int:
    """``enroll STATE PREFIX COUNT VERIFIES``: print the people and the cost."""
    state, prefix, count, verifies = Path(argv[1]), argv[2], int(argv[3]), int(argv[4])
    people = enroll_people(state, prefix, count)
    print(json.dumps({"people": people, "cost": argon2_cost(verifies)}))

    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
