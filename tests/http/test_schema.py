"""Acceptance 4 (last line): schemathesis drives every operation of the OpenAPI spec; no response is a 5xx.

Requests carry an admin key (so they reach the handlers rather than stopping at 401) into an API
whose default collection holds a few documents. Besides "no server error", responses must match
their declared schemas and content types.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.helpers.api import Api, make_api

pytestmark = pytest.mark.slow


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[Api]:
    gen = make_api(tmp_path / "data", None)
    api = next(gen)
    default = api.services.settings.collection
    r = api.upload("admin", default, ("a.txt", b"The lighthouse was built in 1858."), ("b.md", b"# Bakery\nRye bread."))
    assert r.status_code == 201
    api.echo.enqueue(*["The lighthouse was built in 1858 [1]."] * 10_000)
    yield api
    gen.close()


def test_no_server_errors(seeded: Api) -> None:
    # schemathesis' pytest plugin (from_fixture) does not run under pytest 9, so the operations
    # are driven through its Python API, one hypothesis run per operation.
    schema = schemathesis.openapi.from_asgi("/openapi.json", seeded.client.app)
    ran = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(headers=seeded.auth("admin"),
                                   checks=[not_a_server_error, response_schema_conformance, content_type_conformance])

        check()
        ran.append(operation.label)
    assert len(ran) >= 12, ran
