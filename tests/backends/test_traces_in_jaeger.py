"""Exchange spans reach Jaeger through the Collector, and a model server that propagates trace
context hangs its own span under the sidecar's: one trace, found by its id."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.backends import ROOT, Backends, wait_for
from tests.support.fleet_model import drifted_rows
from tests.support.server_process import free_port, otlp_settings, running_server, server_environment
from tests.support.sidecar_process import sidecar_process

pytestmark = [pytest.mark.backends, pytest.mark.timeout(300)]


def _trace(backends: Backends, trace_id: str) -> dict[str, Any] | None:
    try:
        document = backends.get_json(f"{backends.jaeger_url}/api/traces/{trace_id}")
    except OSError:  # 404 until the trace is stored, or a connection error
        return None
    data = document.get("data") or []
    return data[0] if data else None


def test_the_exchange_span_and_the_servers_child_span_are_one_trace_in_jaeger(
    backends: Backends, tmp_path: Path
) -> None:
    port = free_port()
    model_env = server_environment(
        tmp_path / "model-run",
        FLEET_MODEL_TRACES="1",
        OTEL_EXPORTER_OTLP_ENDPOINT=backends.otlp_endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
    )
    command = [sys.executable, "-m", "uvicorn", "tests.support.fleet_model:app", "--app-dir", str(ROOT),
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    sidecar_env = {**otlp_settings(backends.otlp_endpoint), "OTEL_SERVICE_NAME": "loans-sidecar"}
    with (
        running_server(command, model_env, port, tmp_path / "model.log") as model,
        sidecar_process(model.url, tmp_path, "--model-name", "loans", env=sidecar_env) as sidecar,
    ):
        trace_id = secrets.token_hex(16)
        client_span = secrets.token_hex(8)
        answer = httpx.post(
            sidecar.url + "/v1/models/loans:predict",
            json={"instances": drifted_rows(2, seed=3)},
            headers={"traceparent": f"00-{trace_id}-{client_span}-01"},
            timeout=10,
        )
        assert answer.status_code == 200

        def both_spans() -> bool:
            trace = _trace(backends, trace_id)
            return trace is not None and len(trace["spans"]) >= 2

        assert wait_for(both_spans, 30), f"trace {trace_id} not in Jaeger\n{backends.log('collector')}"
        trace = _trace(backends, trace_id)
        assert trace is not None
        services = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
        spans = {services[s["processID"]]: s for s in trace["spans"]}
        assert set(spans) == {"loans-sidecar", "loan-model-server"}, spans.keys()
        exchange, served = spans["loans-sidecar"], spans["loan-model-server"]
        assert exchange["traceID"] == served["traceID"] == trace_id
        # The sidecar's span continues the client's trace; the server's span is its child.
        assert {"refType": "CHILD_OF", "traceID": trace_id, "spanID": client_span} in exchange["references"]
        assert {"refType": "CHILD_OF", "traceID": trace_id, "spanID": exchange["spanID"]} in served[
            "references"
        ]
        tags = {t["key"]: t["value"] for t in exchange["tags"]}
        assert tags["http.response.status_code"] == 200
        assert tags["modeltap.model.name"] == "loans"
