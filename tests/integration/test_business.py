"""Business outcomes on real servers (issue "operations and business", item 5): outcomes posted
to a uvicorn app's `/modeltap/outcome` (monitor process) join their answered rows exactly; the
revenue impact is the formula on the known numbers; a drop past the threshold that is not
significant stays OK, a significant one is an EMERGENCY that reaches a real webhook receiver;
and behind the sidecar, with `--auto-rollback emergency`, the EMERGENCY rolls the model back."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_rollback import Load, sidecar_with_fallback
from tests.support.backends import ROOT, wait_for
from tests.support.server_process import RunningServer, free_port, running_server, server_environment
from tests.support.shop_model import PREDICT
from tests.support.webhook import Webhook, webhook

pytestmark = pytest.mark.timeout(120)

FAST_ALERTS = {
    "MODELTAP_ALERT_FOR_S": "0.5",
    "MODELTAP_ALERT_GROUP_WAIT_S": "0",
    "MODELTAP_MIN_SAMPLES": "300",
    "MODELTAP_OUTCOME_NAMES": "conversion,order_value",
    # Every payload decoded (no sampling under load): the counts below are exact.
    "MODELTAP_WORKER_CPU_BUDGET": "1.0",
}


@contextlib.contextmanager
def _shop(tmp_path: Path, hook: Webhook, **settings: str) -> Iterator[RunningServer]:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT), "--host", "127.0.0.1",
        "--log-level", "warning", "--factory", "tests.support.shop_model:monitored_app",
        "--port", str(port),
    ]  # fmt: skip
    env = server_environment(
        tmp_path / "run",
        MODELTAP_MODEL_NAME="shop",
        MODELTAP_ALERT_WEBHOOK=hook.url,
        **FAST_ALERTS,
        **settings,
    )
    with running_server(command, env, port, tmp_path / "app.log") as server:
        yield server


def _send(client: httpx.Client, url: str, version: str, ids: range) -> None:
    for i in ids:
        answer = client.post(
            url + PREDICT,
            json={"instances": [[float(i), 1.0]]},
            headers={"x-request-id": f"q{i}", "x-route-version": version},
        )
        assert answer.status_code == 200


def _post(client: httpx.Client, url: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    answer = client.post(url, json=items)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def _results(ids: range, converted: dict[int, float]) -> list[dict[str, Any]]:
    """Every request's result: a conversion (1, with its order value) for the ids in `converted`,
    0 for the others."""
    items: list[dict[str, Any]] = []
    for i in ids:
        items.append({"request_id": f"q{i}", "name": "conversion", "value": int(i in converted)})
        if i in converted:
            items.append({"request_id": f"q{i}", "name": "order_value", "value": converted[i]})
    return items


def _business(status: dict[str, Any], version: str) -> dict[str, Any]:
    """The version's business document ({} before the monitor has seen the version)."""
    found: dict[str, Any] = next((b for b in status["business"] if b["version"] == version), {})
    return found


def _exposures(status: dict[str, Any], version: str) -> int:
    exposures: int = _business(status, version).get("window", {}).get("exposures", 0)
    return exposures


def _emergencies(hook: Webhook) -> list[dict[str, Any]]:
    return [n for n in hook.received if n.get("severity") == "emergency" and n.get("kind") == "firing"]


def test_outcomes_join_exactly_and_only_a_significant_drop_is_an_emergency(tmp_path: Path) -> None:
    with webhook() as hook, _shop(tmp_path, hook) as server, httpx.Client(timeout=10) as client:
        url, outcome = server.url, server.url + "/modeltap/outcome"

        def status() -> dict[str, Any]:
            document: dict[str, Any] = httpx.get(url + "/modeltap/status", timeout=10).json()
            return document

        # Version 1 serves 600 rows; one in 10 converts, orders of 40 and 60 alternately.
        _send(client, url, "1", range(600))
        assert wait_for(lambda: _exposures(status(), "1") == 600, 20)  # the monitor has them all
        converted = {i: 40.0 if i % 20 == 0 else 60.0 for i in range(0, 600, 10)}
        answer = _post(client, outcome, _results(range(600), converted))
        assert answer == {"accepted": 660, "duplicates": 0, "rejected": []}
        # Repeats, a conflict, unknown names and ids: answered and counted, never joined twice.
        answer = _post(
            client,
            outcome,
            [
                {"request_id": "q0", "name": "conversion", "value": 1},
                {"request_id": "q0", "name": "conversion", "value": 0},
                {"request_id": "q1", "name": "clicks", "value": 1},
                {"request_id": "never-sent", "name": "conversion", "value": 1},
            ],
        )
        assert answer == {
            "accepted": 1,  # the unknown id waits for an exposure that never comes
            "duplicates": 1,
            "rejected": [{"index": 1, "reason": "conflict"}, {"index": 2, "reason": "unknown_name"}],
        }

        # Version 2: 300 rows, 8 % convert (below 9 %, but p ≈ 0.16): no EMERGENCY.
        _send(client, url, "2", range(1000, 1300))
        assert wait_for(lambda: _exposures(status(), "2") == 300, 10), status()["business"]
        converted = dict.fromkeys([*range(1000, 1300, 25), *range(1012, 1300, 25)], 50.0)
        assert len(converted) == 24
        assert _post(client, outcome, _results(range(1000, 1300), converted))["accepted"] == 324
        time.sleep(2.0)  # longer than alert_for_s plus a snapshot: it would have fired by now
        quiet = _business(status(), "2")
        assert quiet["window"]["conversion_rate"] == pytest.approx(24 / 300)
        assert quiet["threshold"] == pytest.approx(0.09)
        assert 0.05 < quiet["p_value"] < 0.5
        assert quiet["level"] == "OK"
        assert _emergencies(hook) == []

        # 600 more rows at 3 %: 42 of 900 against 60 of 600, z ≈ -3.8: EMERGENCY.
        _send(client, url, "2", range(1300, 1900))
        assert wait_for(lambda: _exposures(status(), "2") == 900, 10)
        converted = dict.fromkeys([*range(1300, 1900, 50), *range(1325, 1900, 100)], 50.0)
        assert len(converted) == 18
        assert _post(client, outcome, _results(range(1300, 1900), converted))["accepted"] == 618
        assert wait_for(lambda: _business(status(), "2")["level"] == "EMERGENCY", 10)
        assert wait_for(lambda: _emergencies(hook), 10)

        document = status()
        v1, v2 = _business(document, "1"), _business(document, "2")
        assert v1["total"]["exposures"] == 600
        assert v1["total"]["requests"] == 600
        assert v1["total"]["sums"] == {
            "conversion": {"count": 600, "sum": 60.0},
            "order_value": {"count": 60, "sum": 30 * 40.0 + 30 * 60.0},
        }
        assert v1["total"]["conversion_rate"] == pytest.approx(0.1)
        assert v1["total"]["average_order_value"] == pytest.approx(50.0)
        assert v2["baseline"] == {
            "source": "version",
            "version": "1",
            "conversion_rate": pytest.approx(0.1),
            "average_order_value": pytest.approx(50.0),
            "revenue_per_prediction": pytest.approx(5.0),
            "outcomes_per_request": pytest.approx(1.1),
        }
        assert v2["window"]["exposures"] == 900
        assert v2["window"]["conversion_rate"] == pytest.approx(42 / 900)
        impact = v2["revenue_impact"]
        assert impact["value"] == pytest.approx((42 / 900 - 0.1) * 900 * 50.0)  # -2400
        assert impact["traffic"] == 900
        # Order values of 50 exactly: the interval comes from the two rates alone.
        p2, p1 = 42 / 900, 0.1
        se = 900 * 50.0 * math.sqrt(p2 * (1 - p2) / 899 + p1 * (1 - p1) / 599)
        assert impact["ci_low"] == pytest.approx(impact["value"] - 1.959964 * se, rel=1e-4)
        assert impact["ci_high"] == pytest.approx(impact["value"] + 1.959964 * se, rel=1e-4)
        assert document["level"] == "EMERGENCY"
        assert document["outcomes"]["joined"] == 660 + 324 + 618
        assert (document["outcomes"]["duplicate"], document["outcomes"]["conflict"]) == (1, 1)

        [firing] = _emergencies(hook)
        [alert] = firing["alerts"]
        assert (firing["model"], firing["version"]) == ("shop", "2")
        assert alert["subject"] == "business:conversion_rate"

        # The metrics say it too, summable across replicas.
        text = httpx.get(url + "/modeltap/metrics", timeout=10).text
        assert (
            'modeltap_business_exposures_total{modeltap_model_name="shop",modeltap_model_version="2"} 900'
            in text
        )
        assert 'modeltap_business_level{modeltap_model_name="shop",modeltap_model_version="2"} 4' in text


@pytest.mark.parametrize("monitor", ["process", "inline"])
def test_modeltap_outcome_from_code_in_the_server_joins_like_the_endpoint(
    tmp_path: Path, monitor: str
) -> None:
    with (
        webhook() as hook,
        _shop(tmp_path, hook, MODELTAP_MONITOR=monitor) as server,
        httpx.Client(timeout=10) as client,
    ):
        _send(client, server.url, "1", range(3))
        answer = client.post(server.url + "/checkout", json={"request_id": "q1", "amount": 42.5})
        ok = {"accepted": 1, "duplicates": 0, "rejected": []}
        assert answer.json() == [ok, ok]

        def joined() -> dict[str, Any]:
            document: dict[str, Any] = httpx.get(server.url + "/modeltap/status", timeout=10).json()
            total: dict[str, Any] = _business(document, "1").get("total", {})
            return total

        # The two outcomes are joined as the worker reaches them, not when they are accepted.
        expected = {"conversion": {"count": 1, "sum": 1.0}, "order_value": {"count": 1, "sum": 42.5}}
        assert wait_for(lambda: joined().get("sums") == expected, 30), joined()
        assert joined()["exposures"] == 3


def test_an_emergency_on_the_business_metric_rolls_the_sidecar_back(tmp_path: Path) -> None:
    env = {"MODELTAP_MODEL_NAME": "shop", "MODELTAP_BUSINESS_FLOOR": "0.08", **FAST_ALERTS}
    with (
        sidecar_with_fallback(tmp_path, "--auto-rollback", "emergency", env=env) as (hook, sidecar, _),
        httpx.Client(timeout=10) as client,
    ):
        admin = sidecar.admin_url
        ids = range(400)
        for i in ids:
            answer = client.post(
                sidecar.url + "/v1/models/churn:predict",
                json={"instances": [[1.0, 2.0]]},
                headers={"x-request-id": f"q{i}"},
            )
            assert answer.json()["served_by"] == "primary"
        # 2 % of the primary's answers convert, against a floor of 8 %: EMERGENCY, rollback.
        conversions = [{"request_id": f"q{i}", "name": "conversion", "value": int(i % 50 == 0)} for i in ids]

        def status() -> dict[str, Any]:
            document: dict[str, Any] = httpx.get(admin + "/status", timeout=10).json()
            return document

        assert wait_for(lambda: _exposures(status(), "2") == 400, 20)
        assert _post(client, admin + "/outcome", conversions)["accepted"] == 400

        def rolled_back() -> bool:
            rollback = httpx.get(admin + "/status", timeout=10).json()["rollback"]
            return bool(rollback["active"]) and rollback["by"] == "auto"

        assert wait_for(rolled_back, 15)
        document = status()
        assert "business:conversion_rate" in document["rollback"]["cause"]
        assert _business(document, "2")["level"] == "EMERGENCY"
        with Load(sidecar.url) as load:
            assert wait_for(lambda: len(load.answers) >= 50, 20)
        assert {who for _, _, who in load.answers} == {"fallback"}
        assert load.errors == []
        assert wait_for(lambda: any(n.get("kind") == "rollback" for n in hook.received), 10)
        assert _emergencies(hook)[0]["alerts"][0]["subject"] == "business:conversion_rate"
