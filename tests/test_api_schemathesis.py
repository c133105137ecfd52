"""Schemathesis fuzzes every operation of the OpenAPI document on a populated app.

No response may be a 5xx, and every response (status code, content type, headers, body)
must match what the document declares; schema-invalid requests must be rejected with a
4xx. `/v1/stream` is endless and is tested on its own (tests/test_api_stream.py).

(schemathesis' pytest plugin, `from_fixture`, does not run under pytest 9, so each
operation's hypothesis strategy is driven directly; failures name the operation.)
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks as st_checks

from api.app import create_app
from api.keys import Role
from ingest.store import Store
from tests.alerting import write_samples
from tests.apihelpers import bearer, fill_store, keys_per_role
from twin.alerts.outbox import utcnow
from twin.alerts.rules import load_rules
from twin.alerts.service import AlertService
from twin.state import Twin

# Features that answer a documented 503 problem until an operator sets them up: failure
# risk at a horizon that neither an approved model nor the shipped default (1 h) serves
# (docs/failure-prediction.md).
NOT_CONFIGURED_HERE = {
    "/v1/failure-risk",
    # issue 27 (whatif): runs need the server's executor; the routes answer 503 here
    "/v1/what-if",
    "/v1/what-if/compare",
    "/v1/what-if/{run_id}",
    "/v1/what-if/{run_id}/cancel",
}

CHECKS = [
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.response_schema_conformance,
    st_checks.negative_data_rejection,
    st_checks.missing_required_header,
    st_checks.unsupported_method,
]


@pytest.fixture(scope="module")
def api_app(tmp_path_factory, site):
    d = tmp_path_factory.mktemp("schemathesis")
    store = Store(d / "twin.duckdb")
    fill_store(store, site, minutes=5)
    keys, tokens = keys_per_role(d / "keys.duckdb")
    # the real alert engine with the packaged rules, so /v1/alerts... are fuzzed too
    alerts = AlertService(store, site, load_rules(None), [])
    t0 = utcnow() - timedelta(minutes=2)
    write_samples(store, "gpu", [("sv1/h1/row1/rk101/n01/gpu0", "gpu_temp_c", 95.0, t0)])
    alerts.evaluate(t0)
    alerts.evaluate(t0 + timedelta(seconds=31))
    app = create_app(Twin(site, store), lambda: {"ingest_running": False}, keys=keys, alerts=alerts)
    app.state.test_tokens = tokens
    yield app
    store.close()


def _fuzz(app, headers: dict[str, str], max_examples: int, extra=None) -> list[str]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path="/v1/stream")
    failures: list[str] = []
    labels = []
    for result in schema.get_all_operations():
        op = result.ok()
        labels.append(op.label)

        @given(case=op.as_strategy())
        # derandomized: CI runs the same cases every time (a failure reproduces)
        @settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            # not_a_server_error, less a feature this test app does not set up
            if response.status_code >= 500:
                assert response.status_code == 503 and case.path in NOT_CONFIGURED_HERE, (
                    f"{case.method} {case.path}: {response.status_code} {response.text[:500]}"
                )
            if extra is not None:
                extra(case, response)

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report all
            failures.append(f"{op.label}: {exc}")
    assert len(labels) >= 10, f"too few operations in the document: {labels}"
    return failures


def test_fuzz_with_admin_key_no_5xx_no_schema_violation(api_app):
    failures = _fuzz(api_app, bearer(api_app.state.test_tokens[Role.admin]), 25)
    assert not failures, "\n\n".join(failures)


def test_fuzz_without_key_every_v1_operation_is_401(api_app):
    def is_401(case, response):
        if case.path.startswith("/v1/"):
            assert response.status_code == 401, f"{case.path}: {response.status_code}"
            assert response.headers["www-authenticate"][0].startswith("Bearer")

    failures = _fuzz(api_app, {}, 5, is_401)
    assert not failures, "\n\n".join(failures)
