"""`modeltap drill` with real processes (issue "alerts that act", item 5): it passes against a
running sidecar (a webhook and a real Alertmanager as receivers) and against a middleware app,
leaves the real state untouched, and fails (exit 1, saying which path) when a receiver is down."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.alertmanager import alertmanager
from tests.support.backends import ROOT, wait_for
from tests.support.fleet_model import training_rows, write_reference
from tests.support.server_process import free_port, running_server, server_environment
from tests.support.sidecar_process import clean_environ, modeltap_command, sidecar_process
from tests.support.webhook import webhook

pytestmark = pytest.mark.timeout(150)
PREDICT = "/v1/models/loans:predict"
SUBJECTS = {"latency", "error_rate"}
# The configured alert path, made quick: fire after 1 s, group for 0.5 s, resolve after 1 s.
# (Alertmanager routes what it got 1 s later, its group wait: a drill through it must still be
# firing then.)
TIMINGS = {
    "MODELTAP_MODEL_NAME": "loans",
    "MODELTAP_ALERT_FOR_S": "1",
    "MODELTAP_ALERT_GROUP_WAIT_S": "0.5",
    "MODELTAP_ALERT_RESOLVE_S": "1",
}
# Quicker still where no Alertmanager is in the path, as tests/unit/alerts/test_drill.py has it.
QUICK_TIMINGS = {**TIMINGS, "MODELTAP_ALERT_FOR_S": "0.5", "MODELTAP_ALERT_RESOLVE_S": "0.5"}


def run_drill(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*modeltap_command(), "drill", "--admin", url, "--timeout", "60", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_environ({}),
        check=False,
    )


def _model_command(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "tests.support.fleet_model:app", "--app-dir", str(ROOT),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Model:
    url: str
    reference: Path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model's reference profile, for every test here (it is only read)."""
    path: Path = write_reference(tmp_path_factory.mktemp("reference"))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, reference: Path) -> Iterator[Model]:
    """The bare model, for every test here: it answers the same rows the same way whoever asked
    before (no state)."""
    directory = tmp_path_factory.mktemp("model")
    port = free_port()
    environment = server_environment(directory / "m")
    with running_server(_model_command(port), environment, port, directory / "m.log") as server:
        yield Model(server.url, reference)


@contextlib.contextmanager
def _sidecar(
    tmp_path: Path, model: Model, *receivers: str, timings: dict[str, str] = TIMINGS
) -> Iterator[Any]:
    reference = ("--reference", str(model.reference))
    with sidecar_process(model.url, tmp_path, *reference, *receivers, env=timings) as sidecar:
        yield sidecar


def _drill_documents(received: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n for n in received if n.get("drill") is True]


def _send(url: str, count: int) -> None:
    rows = training_rows(10 * count, seed=5)
    with httpx.Client(timeout=10) as client:
        for i in range(count):
            assert (
                client.post(url + PREDICT, json={"instances": rows[i * 10 : i * 10 + 10]}).status_code == 200
            )


def test_a_drill_passes_against_a_sidecar_through_a_webhook_and_a_real_alertmanager(
    tmp_path: Path, model: Model
) -> None:
    with (
        webhook() as hook,
        webhook() as routed,
        alertmanager(tmp_path, routed.url) as am_url,
        _sidecar(tmp_path, model, "--alert-webhook", hook.url, "--alertmanager", am_url) as sidecar,
    ):
        _send(sidecar.url, 20)
        status = sidecar.admin_url + "/status"
        assert wait_for(lambda: httpx.get(status, timeout=10).json()["requests"]["total"] == 20, 10)
        before = httpx.get(status, timeout=10).json()
        result = run_drill(sidecar.admin_url)
        assert result.returncode == 0, result.stdout + result.stderr
        report = httpx.get(sidecar.admin_url + "/drill", timeout=10).json()
        after = httpx.get(sidecar.admin_url + "/status", timeout=10).json()
        am_alerts = httpx.get(am_url + "/api/v2/alerts", timeout=10).json()

    assert report["state"] == "passed"
    alerts = {a["scenario"]: a for a in report["alerts"]}
    assert set(alerts) == {"covariate", "prediction", "latency", "errors"}
    for alert in alerts.values():
        assert alert["fired_after_s"] is not None
        assert alert["resolved_after_s"] > alert["fired_after_s"]
    assert {(r["kind"], r["refused"] == []) for r in report["receivers"]} == {
        ("webhook", True),
        ("alertmanager", True),
    }
    # The table names every alert and receiver.
    for alert in alerts.values():
        assert alert["subject"] in result.stdout
    assert "PASSED" in result.stdout
    # The webhook got the firing and the resolved notification, both marked as a drill, listing
    # exactly the drill's subjects.
    drills = _drill_documents(hook.received)
    assert [d["kind"] for d in drills] == ["firing", "resolved"]
    expected = {a["subject"] for a in alerts.values()}
    for document in drills:
        assert {a["subject"] for a in document["alerts"]} == expected
    # Alertmanager routed the drill's alerts (labelled as such) to its webhook.
    routed_alerts = [a for message in routed.received for a in message.get("alerts", [])]
    assert routed_alerts
    assert all(a["labels"].get("modeltap_drill") == "true" for a in routed_alerts)
    assert all(a["labels"].get("modeltap_drill") == "true" for a in am_alerts)
    # The real state never saw the drill: no alert, the same traffic, no rollback.
    assert after["alerts"] == []
    assert after["requests"]["total"] == before["requests"]["total"]
    assert not [n for n in hook.received if n.get("drill") is False]


def test_a_drill_passes_against_a_middleware_app(tmp_path: Path, reference: Path) -> None:
    port = free_port()
    with webhook() as hook:
        env = {
            **server_environment(tmp_path / "app"),
            **QUICK_TIMINGS,
            "MODELTAP_REFERENCE": str(reference),
            "MODELTAP_ALERT_WEBHOOK": hook.url,
        }
        command = [sys.executable, "-m", "uvicorn", "tests.support.fleet_model:monitored_app", "--factory",
                   "--app-dir", str(ROOT), "--host", "127.0.0.1", "--port", str(port),
                   "--log-level", "warning"]  # fmt: skip
        with running_server(command, env, port, tmp_path / "app.log") as app:
            _send(app.url, 5)
            result = run_drill(app.url + "/modeltap", "--scenario", "covariate")
    assert result.returncode == 0, result.stdout + result.stderr
    drills = _drill_documents(hook.received)
    assert [d["kind"] for d in drills] == ["firing", "resolved"]
    assert len(drills[0]["alerts"]) == 1


def test_a_drill_fails_and_says_which_receiver_is_down(tmp_path: Path, model: Model) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"  # bound, never listening
        with (
            webhook() as hook,
            _sidecar(
                tmp_path, model, "--alert-webhook", hook.url, "--alert-webhook", down, timings=QUICK_TIMINGS
            ) as sidecar,
        ):
            result = run_drill(sidecar.admin_url, "--scenario", "errors")
    assert result.returncode == 1, result.stdout + result.stderr
    port = down.split(":")[2].split("/")[0]
    assert f"webhook http://127.0.0.1:{port}/… refused the firing notification" in result.stdout
    assert "FAILED" in result.stdout
    # The receiver that is up still got the drill's notifications.
    assert [d["kind"] for d in _drill_documents(hook.received)] == ["firing", "resolved"]


def test_a_drill_refuses_a_second_one_and_remote_writers(tmp_path: Path, model: Model) -> None:
    with webhook() as hook, _sidecar(tmp_path, model, "--alert-webhook", hook.url) as sidecar:
        first = httpx.post(sidecar.admin_url + "/drill", json={"scenario": "latency"}, timeout=10)
        second = httpx.post(sidecar.admin_url + "/drill", json={}, timeout=10)
        forwarded = httpx.post(
            sidecar.admin_url + "/drill", headers={"x-forwarded-for": "203.0.113.9"}, json={}, timeout=10
        )
        bad = httpx.post(sidecar.admin_url + "/drill", json={"scenario": "meteor"}, timeout=10)
    assert first.status_code == 202
    assert first.json()["state"] == "running"
    assert second.status_code == 409
    assert forwarded.status_code == 403
    assert bad.status_code == 400
