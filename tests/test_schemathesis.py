"""Property-based requests from the app's own OpenAPI schema against a real server: no input
may produce a 5xx. Bounded to a few examples per operation so CI stays well under a minute."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.conftest import ServerThread

MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    from etl.config import Settings
    from etl.simulate import generate
    from tests.conftest import free_port

    tmp = tmp_path_factory.mktemp("schemathesis")
    generate(tmp / "node", lines=500)
    s = Settings(node_dir=tmp / "node", db=tmp / "s.duckdb", start_from="start", debounce_ms=5,
                 poll_interval_ms=50, port=free_port(), seal_interval_s=3600.0, rules_file=Path(""),
                 sql_timeout_s=1.0)
    with ServerThread(s) as srv:
        yield srv


def test_no_input_makes_a_server_error(running: ServerThread) -> None:
    spec = httpx.get(running.url + "/openapi.json", timeout=30).json()
    # PUT /v1/rules would replace the server's rules with generated ones: the rules'
    # validation has tests of its own
    schema = schemathesis.openapi.from_dict(spec).exclude(method="PUT")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=running.url, checks=[not_a_server_error], timeout=30)

        call()
