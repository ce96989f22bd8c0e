"""schemathesis against the OpenAPI document: no input makes a 5xx."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis")

pytest_plugins = ["tests.web.fixtures"]


def _explore(
    operation: Any, seen: list[int], failures: list[str]
) -> Callable[[], None]:
    """A Hypothesis test that sends generated requests to one operation."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def explore(case: Any) -> None:
        response = case.call()
        seen.append(response.status_code)
        if response.status_code >= 500:
            failures.append(f"{operation.label}: {response.status_code}")

    return explore  # type: ignore[no-any-return]


def test_no_generated_request_makes_a_server_error(app: Flask) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    seen: list[int] = []
    failures: list[str] = []

    for operation in operations:
        _explore(operation, seen, failures)()

    assert operations
    assert not failures, failures
    # Every generated request reached a route and was answered by it.
    assert seen and 404 not in seen, sorted(set(seen))
