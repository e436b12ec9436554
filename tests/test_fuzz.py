"""Schemathesis over the typed spec (docs/openapi.json), request bodies included, against real processes
(issue 11, item 7): an embedded Redis, a worker serving the demo model and a gateway with an API key.
Every check runs (positive and negative data, coverage, fuzzing, stateful phases); the run is bounded by
examples per operation and a time budget. Asserted: no 5xx answer (schemathesis' check and the gateway's
own request counter), and the conformance checks the gateway satisfies: status codes, content types,
response schemas and headers documented, authentication enforced. The rest is printed (``-s``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli.embedded_redis import free_port
from tests.conftest import ROOT, WEIGHTS, Stack, write_demo_registry

pytestmark = pytest.mark.integration

KEY = "fuzz-key-0123456789"
MAX_EXAMPLES = 10  # per operation and phase
MAX_TIME_S = 120  # the whole schemathesis run
# failures that must not occur, by schemathesis' check type (``failures[].type`` of its JSON report)
MUST_PASS = {
    "ServerError": "not_a_server_error",
    "UndefinedStatusCode": "status_code_conformance",
    "UndefinedContentType": "content_type_conformance",
    "JsonSchemaError": "response_schema_conformance",
    "MalformedJson": "response_schema_conformance",
    "MissingHeaders": "response_headers_conformance",
    "MissingContentType": "content_type_conformance",
    "MalformedMediaType": "content_type_conformance",
    "ContentDeserializationError": "response_schema_conformance",
    "UnsupportedMethodResponse": "unsupported_method (405 with Allow)",
    "IgnoredAuth": "ignored_auth",
}


@pytest.fixture(scope="module")
def fuzz_url(tmp_path_factory):
    if not WEIGHTS.exists():
        pytest.fail(f"the demo model's weights are missing: {WEIGHTS} (run `make train`)")
    tmp = tmp_path_factory.mktemp("fuzz")
    stack = Stack(tmp, registry=write_demo_registry(tmp))
    try:
        port = free_port()
        # the lockout would answer every request 429 once schemathesis has sent its wrong keys
        env = {"WHITEBOX_API_KEYS": KEY, "WHITEBOX_AUTH_FAILURES_PER_MIN": "1000000"}
        env["WHITEBOX_REQUEST_TIMEOUT_S"] = "20"
        stack.start_gateway(port, env)
        url = f"http://127.0.0.1:{port}"
        stack.wait_ready(url, timeout=60)
        yield url
    finally:
        stack.stop()


def server_errors(url: str) -> tuple[int, int]:
    """(requests, 5xx answers) the gateway counted (whitebox_http_requests_total)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    total = errors = 0
    for family in text_string_to_metric_families(text):
        if family.name == "whitebox_http_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    total += int(sample.value)
                    errors += int(sample.value) if sample.labels["status"].startswith("5") else 0
    return total, errors


def test_schemathesis_finds_no_5xx_and_no_undocumented_answers(fuzz_url, tmp_path):
    report = tmp_path / "schemathesis.json"
    config = tmp_path / "schemathesis.toml"  # the key for both declared schemes: no generated credentials
    config.write_text(f'[auth.openapi.APIKeyHeader]\napi_key = "{KEY}"\n[auth.openapi.HTTPBearer]\nbearer = "{KEY}"\n')
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        str(ROOT / "docs" / "openapi.json"),
        "--url",
        fuzz_url,
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--max-time",
        str(MAX_TIME_S),
        "--no-shrink",
        "--continue-on-failure",
        "--seed",
        "1",
        "--workers",
        "2",
        "--request-timeout",
        "30",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=MAX_TIME_S + 120)
    assert report.exists(), out.stdout[-3000:] + out.stderr[-3000:]
    run = json.loads(report.read_text())
    failures = {f["type"]: f for f in run["failures"]}
    requests, errors_5xx = server_errors(fuzz_url)
    print(f"\nschemathesis {run['schemathesis_version']}: {run['test_cases']['generated']} cases generated over")
    print(f"{run['operations']['tested']} operations in {run['running_time']:.0f} s; the gateway counted")
    print(f"{requests} requests, {errors_5xx} answered 5xx. Failures by check:")
    for f in run["failures"]:
        print(f"  {f['code']} {f['title']}: {f['count']} ({', '.join(f['operations'])})")
    assert run["operations"]["tested"] == run["operations"]["selected"] >= 15
    assert run["test_cases"]["generated"] >= 15 * MAX_EXAMPLES
    assert requests >= 15 * MAX_EXAMPLES
    assert errors_5xx == 0
    bad = {t: failures[t] for t in MUST_PASS if t in failures}
    assert not bad, json.dumps(bad, indent=1)
