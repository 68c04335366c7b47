"""A bounded schemathesis run over the server's OpenAPI schema: no generated request, valid or not,
may make the server fail (5xx) or stop answering.

The generating endpoints (txt2img and job submission) are left out of the fuzzing: a schema-valid
body may ask for an 8192×8192 image in 1000 steps, hours on a CPU; their validation has its own tests.
Hypothesis drives each operation's strategy directly (schemathesis' pytest plugin does not load on
this pytest).
"""

from __future__ import annotations

import re

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from server_helpers import running_server

GENERATING = re.compile(r"^POST /(sdapi/v1/txt2img|sfumato/v1/jobs)$")
EXAMPLES_PER_OPERATION = 12


def test_no_request_breaks_the_server(data_dir):
    with running_server(data_dir) as base:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        fuzzed = []
        for result in schema.get_all_operations():
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            if GENERATING.match(label):
                continue
            fuzzed.append(label)

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case) -> None:
                case.call_and_validate(base_url=base, checks=[not_a_server_error], timeout=60)

            run()
            assert httpx.get(f"{base}/sdapi/v1/samplers", timeout=30).status_code == 200, label
        assert len(fuzzed) >= 25, fuzzed  # the whole API, not a few operations
