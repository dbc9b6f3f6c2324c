"""Three replicas, one fleet: two sidecars in front of one model server and a middleware app under
`uvicorn --workers 2` export to a real OpenTelemetry Collector; Prometheus scrapes it and runs the
rules `modeltap rules` wrote. Drifted traffic is split 50/30/20 among them; the same traffic goes
to a fourth modeltap process alone. Prometheus's fleet PSI and Jensen-Shannon must equal that
process's own numbers, the drift alert must fire for the shifted features only, and every panel
of `modeltap dashboard` must find data."""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modeltap.cli import main as modeltap_main
from modeltap.fleet import names
from modeltap.fleet import rules as recorded
from modeltap.fleet.dashboard import panel_queries
from modeltap.reference.document import load_reference
from tests.support.backends import ROOT, Backends, wait_for
from tests.support.fleet_model import drifted_rows, write_reference
from tests.support.server_process import free_port, otlp_settings, running_server, server_environment
from tests.support.sidecar_process import sidecar_process

pytestmark = [pytest.mark.backends, pytest.mark.timeout(1500)]

ROWS = 1200
BATCH = 4
VERSION = "2"
SCORED = ("amount", "income", "country", "prediction")
SHIFTED = {"amount", "country", "prediction"}


@dataclass
class Fleet:
    backends: Backends
    reference: Path
    reference_id: str
    local: dict[str, dict[str, Any]]  # the single process's /status features, by name
    routed: dict[str, int]  # requests per replica
    replicas: dict[str, str]  # base URL per replica


def _uvicorn(target: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", target, "--app-dir", str(ROOT), "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", *extra]  # fmt: skip


def _features(status_url: str) -> dict[str, dict[str, Any]]:
    status = httpx.get(status_url, timeout=10).json()
    [model] = [m for m in status["models"] if m["name"] == "loans"]
    return {f["name"]: f for f in model["features"]}


@pytest.fixture(scope="module")
def fleet(backends: Backends, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("fleet")
    reference = write_reference(directory)
    rules = directory / "rules.yml"
    argv = ["rules", "--reference", str(reference), "--cumulative", "--window", "30s", "--for", "1s",
            "-o", str(rules)]  # fmt: skip
    assert modeltap_main(argv) == 0
    backends.load_rules(rules.read_text())

    exporting = {
        **otlp_settings(backends.otlp_endpoint, export_interval_ms=1000),
        "MODELTAP_REFERENCE": str(reference),
        "MODELTAP_MODEL_NAME": "loans",
        "MODELTAP_MODEL_VERSION": VERSION,
    }
    with contextlib.ExitStack() as stack:
        model_port, app_port, single_port = free_port(), free_port(), free_port()
        model = stack.enter_context(
            running_server(
                _uvicorn("tests.support.fleet_model:app", model_port),
                server_environment(directory / "model-run"),
                model_port,
                directory / "model.log",
            )
        )
        sidecars = []
        for name in ("a", "b"):
            (directory / name).mkdir()
            sidecars.append(
                stack.enter_context(
                    sidecar_process(
                        model.url, directory / name, env={**exporting, "OTEL_SERVICE_NAME": "loans-sidecar"}
                    )
                )
            )
        app = stack.enter_context(
            running_server(
                _uvicorn("tests.support.fleet_model:monitored_app", app_port, "--factory", "--workers", "2"),
                server_environment(directory / "app-run", **exporting, OTEL_SERVICE_NAME="loans-app"),
                app_port,
                directory / "app.log",
            )
        )
        single = stack.enter_context(
            running_server(
                _uvicorn("tests.support.fleet_model:monitored_app", single_port, "--factory"),
                server_environment(
                    directory / "single-run",
                    MODELTAP_REFERENCE=str(reference),
                    MODELTAP_MODEL_NAME="loans",
                    MODELTAP_MODEL_VERSION=VERSION,
                ),
                single_port,
                directory / "single.log",
            )
        )
        replicas = {"sidecar-a": sidecars[0].url, "sidecar-b": sidecars[1].url, "app": app.url}
        routed = dict.fromkeys(replicas, 0)
        rows = drifted_rows(ROWS, seed=5)
        with httpx.Client(timeout=10) as client:
            for i in range(0, ROWS, BATCH):
                body = json.dumps({"instances": rows[i : i + BATCH]}).encode()
                share = (i // BATCH) % 10
                replica = "sidecar-a" if share < 5 else "sidecar-b" if share < 8 else "app"
                path = "/v1/models/loans:predict"
                headers = {"content-type": "application/json"}
                answer = client.post(replicas[replica] + path, content=body, headers=headers)
                alone = client.post(single.url + path, content=body, headers=headers)
                assert answer.status_code == alone.status_code == 200
                assert answer.content == alone.content
                routed[replica] += 1

        reference_id = load_reference(reference).id
        totals = f'{recorded.WINDOW_VALUES}{{{names.REFERENCE}="{reference_id}"}}'
        assert wait_for(
            lambda: backends.values(totals, names.FEATURE) == dict.fromkeys(SCORED, float(ROWS)), 60
        ), f"{backends.values(totals, names.FEATURE)}\n{backends.log('collector')}"
        single_status = single.url + "/modeltap/status"
        assert wait_for(lambda: all(f["window_count"] == ROWS for f in _features(single_status).values()), 30)
        yield Fleet(backends, reference, reference_id, _features(single_status), routed, replicas)


def test_every_replica_reported_its_share_of_the_traffic(fleet: Fleet) -> None:
    # Three replicas reported: two sidecars and one app (its two workers share one monitor), each
    # with the rows routed to it, as Prometheus sums them per instance.
    per_instance = fleet.backends.query(
        f'sum by (instance) ({names.FEATURE_BUCKET}{{le="+Inf", {names.FEATURE}="amount"}})'
    )
    rows = sorted(int(float(row["value"][1])) for row in per_instance)
    assert rows == sorted(requests * BATCH for requests in fleet.routed.values())


@pytest.mark.parametrize("feature", SCORED)
def test_fleet_psi_and_js_equal_one_process_seeing_everything(fleet: Fleet, feature: str) -> None:
    selector = f'{{{names.REFERENCE}="{fleet.reference_id}", {names.FEATURE}="{feature}"}}'
    [psi] = fleet.backends.query(recorded.PSI + selector)
    [js] = fleet.backends.query(recorded.JS + selector)
    local = fleet.local[feature]
    assert psi["metric"][names.MODEL] == "loans"
    assert psi["metric"][names.VERSION] == VERSION
    assert local["psi"] is not None
    assert local["js"] is not None
    assert float(psi["value"][1]) == pytest.approx(local["psi"], abs=1e-6, rel=0)
    assert float(js["value"][1]) == pytest.approx(local["js"], abs=1e-6, rel=0)


def test_the_drift_alert_fires_for_the_shifted_features_only(fleet: Fleet) -> None:
    levels = {name: f["level"] for name, f in fleet.local.items() if name in SCORED}
    assert {name for name, level in levels.items() if level in ("WARNING", "CRITICAL")} == SHIFTED
    expected = {name: "critical" if levels[name] == "CRITICAL" else "warning" for name in SHIFTED}

    def firing() -> dict[str, str]:
        return {
            a["labels"][names.FEATURE]: a["labels"]["severity"]
            for a in fleet.backends.alerts()
            if a["labels"]["alertname"] == "ModelTapFeatureDrift" and a["state"] == "firing"
        }

    assert wait_for(lambda: firing() == expected, 30), firing()
    level = f'{recorded.LEVEL}{{{names.REFERENCE}="{fleet.reference_id}"}}'
    assert fleet.backends.values(level, names.FEATURE) == {
        name: {"OK": 0.0, "INFO": 0.0, "WARNING": 2.0, "CRITICAL": 3.0}[levels[name]] for name in SCORED
    }


def test_every_name_the_rules_use_is_served_by_the_collector(fleet: Fleet) -> None:
    exposition = fleet.backends.collector_exposition()
    served = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{", exposition, re.MULTILINE))
    for metric in (names.FEATURE_BUCKET, names.FEATURE_CATEGORIES, names.DURATION_BUCKET,
                   names.DURATION_COUNT, names.DROPPED, names.VIOLATIONS):  # fmt: skip
        assert metric in served, metric
    labels = set(re.findall(r"[{,]([a-zA-Z_][a-zA-Z0-9_]*)=", exposition))
    for label in (names.MODEL, names.VERSION, names.REFERENCE, names.ROLE, names.FEATURE,
                  names.CATEGORY, names.DROP_REASON, names.VIOLATION_REASON, names.STATUS):  # fmt: skip
        assert label in labels, label
    # Categories are the reference's vocabulary plus __other__ and __missing__, nothing else.
    categories = set(re.findall(rf'{names.CATEGORY}="([^"]*)"', exposition))
    profile = load_reference(fleet.reference)
    vocabulary = {v for f in profile.features if f.kind == "categorical" for v in f.vocabulary}
    assert categories == vocabulary | {"__other__", "__missing__"}


def test_every_dashboard_panel_finds_data(fleet: Fleet, tmp_path: Path) -> None:
    output = tmp_path / "dashboard.json"
    assert modeltap_main(["dashboard", "--reference", str(fleet.reference), "-o", str(output)]) == 0
    document = json.loads(output.read_text())
    # Rates and latency use the 30 s window: keep requests flowing while the panels are read.
    with httpx.Client(timeout=10) as client:
        body = json.dumps({"instances": drifted_rows(BATCH, seed=9)}).encode()
        headers = {"content-type": "application/json"}
        for _ in range(20):
            client.post(fleet.replicas["app"] + "/v1/models/loans:predict", content=body, headers=headers)
    substitutions = {"$model": "loans", "$version": VERSION, "$feature": "amount", "${datasource}": "x"}

    def expand(text: str) -> str:
        for variable, value in substitutions.items():
            text = text.replace(variable, value)
        return text

    for variable in document["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["definition"])
        assert match, variable["definition"]
        rows = fleet.backends.query(expand(match.group(1)))
        assert any(match.group(2) in row["metric"] for row in rows), variable["name"]

    def has_data(expr: str) -> bool:
        return wait_for(lambda: fleet.backends.query(expr), 20)

    missing = [title for title, expr in panel_queries(document) if not has_data(expand(expr))]
    assert not missing, f"panels without data: {missing}"
