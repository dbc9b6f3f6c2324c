"""Drifted traffic through a real sidecar fires one grouped CRITICAL notification at a local
webhook, and a resolution once the traffic is back to normal; a receiver that hangs costs the
data path nothing."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modeltap.alerts.alertmanager import AlertmanagerSender
from modeltap.alerts.state import AlertBook, AlertKey, Observation
from modeltap.stats.scores import Level
from tests.support.alertmanager import alertmanager
from tests.support.backends import ROOT, wait_for
from tests.support.fleet_model import drifted_rows, training_rows, write_reference
from tests.support.polling import wait_until
from tests.support.server_process import free_port, running_server, server_environment
from tests.support.sidecar_process import SidecarProcess, sidecar_process
from tests.support.webhook import webhook

pytestmark = pytest.mark.timeout(120)
PREDICT = "/v1/models/loans:predict"


def _send(client: httpx.Client, url: str, rows: list[dict[str, Any]], seconds: float) -> int:
    """Requests of 10 rows for `seconds`; returns how many failed."""
    return _until(client, url, rows, lambda: False, seconds)


@dataclasses.dataclass(frozen=True)
class Model:
    url: str
    reference: Path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    """The bare model and its reference profile, for every test here: it answers the same rows
    the same way whoever asked before (no state), and the profile is only read."""
    directory = tmp_path_factory.mktemp("model")
    reference = write_reference(directory)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "tests.support.fleet_model:app", "--app-dir", str(ROOT),
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    environment = server_environment(directory / "m")
    with running_server(command, environment, port, directory / "model.log") as server:
        yield Model(server.url, reference)


@contextlib.contextmanager
def _fleet(
    tmp_path: Path, model: Model, webhook_url: str | None, extra: dict[str, str] | None = None
) -> Iterator[SidecarProcess]:
    hook_flags = ("--alert-webhook", webhook_url) if webhook_url else ()
    env = {
        "MODELTAP_MODEL_NAME": "loans",
        "MODELTAP_WINDOW_SLOTS": "3",
        "MODELTAP_WINDOW_SLOT_S": "1",
        "MODELTAP_MIN_SAMPLES": "100",
        "MODELTAP_ALERT_FOR_S": "1",
        "MODELTAP_ALERT_GROUP_WAIT_S": "3",
        # A drift level moves only when the scores are worked out again (once a window slot, 1 s
        # here): one that has stayed below for a second stays below, so a longer resolve only adds
        # waiting.
        "MODELTAP_ALERT_RESOLVE_S": "1",
        **(extra or {}),
    }
    # The webhook as the repeatable flag (the variable MODELTAP_ALERT_WEBHOOK works alike).
    reference = ("--reference", str(model.reference))
    with sidecar_process(model.url, tmp_path, *reference, *hook_flags, env=env) as sidecar:
        yield sidecar


def _until(client: httpx.Client, url: str, rows: list[dict[str, Any]], done: Any, timeout_s: float) -> int:
    """Send requests of 10 rows until `done()` (or the timeout); returns how many failed."""
    failed = 0
    deadline = time.monotonic() + timeout_s
    i = 0
    while time.monotonic() < deadline and not done():
        batch = rows[(i * 10) % len(rows) : (i * 10) % len(rows) + 10]
        if client.post(url + PREDICT, json={"instances": batch}).status_code != 200:
            failed += 1
        i += 1
        time.sleep(0.01)
    return failed


def test_drift_fires_one_grouped_critical_notification_and_resolves_after_recovery(
    tmp_path: Path, model: Model
) -> None:
    with webhook() as hook, _fleet(tmp_path, model, hook.url) as sidecar, httpx.Client(timeout=10) as client:
        url = sidecar.url
        assert _send(client, url, training_rows(3000, seed=40), 3.0) == 0

        def firing() -> list[dict[str, Any]]:
            return [n for n in hook.received if n["kind"] == "firing" and n["severity"] == "critical"]

        assert _until(client, url, drifted_rows(3000, seed=41), firing, 40.0) == 0
        assert firing(), httpx.get(sidecar.admin_url + "/status", timeout=10).json()["alerts"]
        # Companions that went critical within the group wait came in the same notification.
        assert _send(client, url, drifted_rows(3000, seed=45), 4.0) == 0
        assert len(firing()) == 1, hook.received
        subjects = {a["subject"] for a in firing()[0]["alerts"]}
        assert {"amount", "country"} <= subjects
        assert "income" not in subjects
        for alert in firing()[0]["alerts"]:
            assert alert["state"] == "firing"
            assert alert["runbook_url"].startswith("https://")
        assert firing()[0]["model"] == "loans"
        assert firing()[0]["drill"] is False

        def resolved() -> set[str]:
            return {a["subject"] for n in hook.received if n["kind"] == "resolved" for a in n["alerts"]}

        assert (
            _until(
                client, url, training_rows(3000, seed=42), lambda: {"amount", "country"} <= resolved(), 40.0
            )
            == 0
        )
        assert {"amount", "country"} <= resolved(), hook.received
        # Not re-sent while firing within the repeat interval (4 h by default).
        assert [n["kind"] for n in hook.received].count("repeat") == 0


def test_a_hanging_receiver_costs_the_data_path_nothing(tmp_path: Path, model: Model) -> None:
    # No group wait: nothing here is about grouping, and the notification leaves as the alert fires.
    with (
        webhook(hang_s=30.0) as hook,
        _fleet(tmp_path, model, hook.url, {"MODELTAP_ALERT_GROUP_WAIT_S": "0"}) as sidecar,
        httpx.Client(timeout=10) as client,
    ):

        def fired() -> bool:
            alerts = httpx.get(sidecar.admin_url + "/status", timeout=10).json()["alerts"]
            return any(a["state"] == "firing" for a in alerts)

        assert _until(client, sidecar.url, drifted_rows(3000, seed=43), fired, 40.0) == 0
        assert fired()
        # The notification is now stuck in the hanging receiver.
        assert wait_until(lambda: hook.arrived > 0, timeout_s=10.0)
        assert hook.received == []
        latencies = []
        for i in range(50):
            started = time.monotonic()
            rows = drifted_rows(10, seed=100 + i)
            assert client.post(sidecar.url + PREDICT, json={"instances": rows}).status_code == 200
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 1.0, max(latencies)


def test_a_real_alertmanager_gets_the_alert_with_the_rules_labels_and_its_resolution(
    tmp_path: Path, model: Model
) -> None:
    with webhook() as hook, alertmanager(tmp_path, hook.url) as am_url:
        env_extra = {"MODELTAP_ALERTMANAGER": am_url}
        with _fleet(tmp_path, model, None, env_extra) as sidecar, httpx.Client(timeout=10) as client:

            def delivered(status: str) -> list[dict[str, Any]]:
                return [
                    alert
                    for message in hook.received
                    for alert in message.get("alerts", [])
                    if alert["status"] == status and alert["labels"].get("severity") == "critical"
                ]

            def fired_for(status: str) -> set[str | None]:
                return {a["labels"].get("modeltap_feature_name") for a in delivered(status)}

            # Alertmanager may deliver the two features' alerts in separate notifications (a group
            # flushes as its alerts arrive), so the wait is for both, not for the first message.
            def both_fire() -> bool:
                return {"amount", "country"} <= fired_for("firing")

            url = sidecar.url
            assert _until(client, url, drifted_rows(3000, seed=51), both_fire, 60.0) == 0
            firing = delivered("firing")
            assert {"amount", "country"} <= fired_for("firing"), hook.received
            for alert in firing:
                labels = alert["labels"]
                assert labels["alertname"] == "ModelTapFeatureDrift"
                assert labels["modeltap_model_name"] == "loans"
                assert labels["modeltap_reference_id"].startswith("sha256:")
                assert alert["annotations"]["runbook_url"].startswith("https://")
            active = httpx.get(am_url + "/api/v2/alerts", timeout=10).json()
            assert {a["labels"].get("modeltap_feature_name") for a in active} >= {"amount", "country"}

            def resolved() -> bool:
                return {"amount", "country"} <= fired_for("resolved")

            assert _until(client, url, training_rows(3000, seed=52), resolved, 60.0) == 0
            assert resolved(), hook.received


def test_a_warning_raises_monitoring_for_a_bounded_time(tmp_path: Path, model: Model) -> None:
    """WARNING's response: trace sampling doubled (0.1 -> 0.2, sent to the serving processes as a
    control message), payload decoding and snapshots up, said in /status, for alert_boost_s."""
    extra = {
        "MODELTAP_PSI_CRITICAL": "50",  # drift reaches WARNING only
        # The boost follows the warning's notification: no group wait before it. (The drifted
        # features' scores are worked out together, so they go pending, and fire, together.)
        "MODELTAP_ALERT_GROUP_WAIT_S": "0",
        "MODELTAP_ALERT_BOOST_S": "60",
        "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    }
    with (
        webhook() as hook,
        _fleet(tmp_path, model, hook.url, extra) as sidecar,
        httpx.Client(timeout=10) as client,
    ):

        def status() -> dict[str, Any]:
            document: dict[str, Any] = httpx.get(sidecar.admin_url + "/status", timeout=10).json()
            return document

        def boosted() -> bool:
            return status()["monitoring"]["boost"] is not None

        assert status()["monitoring"]["boost"] is None
        assert _until(client, sidecar.url, drifted_rows(3000, seed=61), boosted, 40.0) == 0
        monitoring = status()["monitoring"]
        assert "amount" in monitoring["boost"]["reason"]
        assert 0 < monitoring["boost"]["until_unix_s"] - time.time() <= 60
        # The control message follows within a control interval (0.2 s) of the boost.
        assert wait_for(lambda: status()["monitoring"]["control"].get("trace_ratio") == 0.2, 5), status()
        assert {n["severity"] for n in hook.received if n["kind"] == "firing"} == {"warning"}


def test_replicas_alert_apart_so_one_recovering_resolves_only_its_own(tmp_path: Path) -> None:
    """Two replicas of one model, each judging its own traffic, post to one Alertmanager. Replica
    A recovers and resolves; B still fires: B's alert stays active there (one label set for both
    made A's resolution end B's alert, which came back with B's next re-send a minute later)."""
    key = AlertKey("churn", "1", "tenure_years")
    reference = "sha256:" + "0" * 64

    def replica(name: str) -> tuple[AlertBook, AlertmanagerSender]:
        book = AlertBook(for_s=0.0, resolve_s=0.0, group_wait_s=0.0)
        return book, AlertmanagerSender((am_url,), instance=name)

    def step(book: AlertBook, sender: AlertmanagerSender, level: Level, now: float) -> None:
        offset = time.time() - now
        for notification in book.evaluate([Observation(key, level, 0.9, 0.2)], now):
            sender.notify(notification, now, lambda t: t + offset, reference)
        sender.tick(now, lambda t: t + offset)

    def active() -> list[str]:
        alerts = httpx.get(am_url + "/api/v2/alerts?active=true", timeout=10).json()
        return sorted(
            a["labels"].get("modeltap_instance", "") for a in alerts if a["status"]["state"] == "active"
        )

    with webhook() as hook, alertmanager(tmp_path, hook.url) as am_url:
        a, b = replica("pod-a"), replica("pod-b")
        now = time.monotonic()
        step(*a, Level.CRITICAL, now)
        step(*b, Level.CRITICAL, now)
        assert wait_until(lambda: active() == ["pod-a", "pod-b"], timeout_s=20.0), active()
        now = time.monotonic()
        step(*a, Level.OK, now)  # A's window recovered
        step(*b, Level.CRITICAL, now)  # B's still critical; its next re-send is a minute away
        assert wait_until(lambda: active() == ["pod-b"], timeout_s=20.0), active()
        time.sleep(2.0)  # group_interval 1 s: whatever Alertmanager would send, it has
        assert active() == ["pod-b"]
        resolved = [
            alert["labels"].get("modeltap_instance")
            for message in hook.received
            for alert in message.get("alerts", [])
            if alert["status"] == "resolved"
        ]
        assert resolved, hook.received
        assert set(resolved) == {"pod-a"}, hook.received
        for sender in (a[1], b[1]):
            sender.close(2.0)
