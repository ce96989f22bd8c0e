"""Certificate issuance: through the API, and in-process for comparison.

The API path is what a person's ``jit`` runs: HTTPS to ``serve web``
(gunicorn, the configured number of workers) in the bastion's host,
password and TOTP checked (one argon2id verify each), policy, the CA's
signature, the database. In-process issuance is the same call without
the login, HTTP and TLS, so the two rows show where the time goes.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass

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


def measure_issuance(lab: Lab, settings: IssuanceSettings) -> list[Row]:
    """Issuance rows: the API's (or why not) and in-process."""
    cost = argon2_cost(settings.verifies)
    rows = _api_rows(lab, settings, cost) if api_present() else _missing_api_rows()

    return rows + _in_process_rows(lab, settings)


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


def _api_rows(lab: Lab, settings: IssuanceSettings, cost: str) -> list[Row]:
    from tests.web.server import WebUnderTest

    people = _enroll(lab, settings.sequential + settings.parallel)
    host = lab.appliance.host
    web = WebUnderTest(lab.appliance, host, host.free_port(8443))
    workers = str(settings.workers or lab.appliance.state.config.web.workers)
    web.start(web_workers=workers)
    try:
        result = _run_client(lab, web.url, people, settings)
    finally:
        web.stop()
    latencies = [s * 1000 for s in result["latencies"]]
    rate = result["parallel"] / result["parallel_seconds"]
    label = f"TLS; {cost}"

    return [
        Row(
            "Certificate issuance via API p50",
            "ms",
            label,
            {"jit-bastion": Figure.of(latencies)},
        ),
        Row(
            "Certificate issuance via API p95",
            "ms",
            label,
            {"jit-bastion": Figure(percentile(latencies, 95))},
            at_most(250),
        ),
        Row(
            f"Certificate issuance via API, 4 clients, {workers} workers",
            "per s",
            label,
            {"jit-bastion": Figure(rate)},
        ),
    ]


def _enroll(lab: Lab, count: int) -> list[dict[str, str]]:
    """Enroll ``count`` people with the real hasher; one login each."""
    from tests.web.people import enroll_person

    state = State.open(lab.appliance.state_path)
    people = []
    for number in range(count):
        person = enroll_person(state, f"bench{number:04d}", time.time)
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
