"""Labels fed back over HTTP join their predictions, on real servers: a uvicorn app with the
middleware (analysis inline and in the monitor process) and the sidecar (labels to its admin
port). The realised accuracy and F1 in /status equal scikit-learn's on the same joined rows;
duplicates, conflicts and unknown ids are answered and counted; access and size are enforced."""

from __future__ import annotations

import contextlib
import csv
import math
import random
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, roc_auc_score

from modeltap.cli import main as modeltap_main
from modeltap.stats.performance import auc_from_histograms
from tests.support import binary_model, ranker_model
from tests.support.backends import ROOT, wait_for
from tests.support.fleet_model import FEATURES, decide, drifted_rows, training_rows
from tests.support.otlp_receiver import OtlpHttpReceiver
from tests.support.server_process import (
    RunningServer,
    free_port,
    otlp_settings,
    rss_bytes,
    running_server,
    server_environment,
)
from tests.support.sidecar_process import sidecar_process

pytestmark = pytest.mark.timeout(120)

PREDICT = "/v1/models/loans:predict"
LOANS = "tests.support.fleet_model:monitored_app"
UVICORN = [
    sys.executable,
    "-m",
    "uvicorn",
    "--app-dir",
    str(ROOT),
    "--host",
    "127.0.0.1",
    "--log-level",
    "warning",
]
REQUESTS = 120


def _outcome(row: dict[str, Any], rng: random.Random) -> str:
    """What really happened: usually what the model decided, sometimes not."""
    return decide(row) if rng.random() < 0.75 else rng.choice(("approve", "review", "deny"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("truth")
    table = directory / "validation.csv"
    rng = random.Random(5)
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURES, "prediction", "outcome"])
        for row in training_rows(2000, seed=21):
            writer.writerow([row["amount"], row["income"], row["country"], decide(row), _outcome(row, rng)])
    path = directory / "reference.json"
    argv = ["profile", str(table), "-o", str(path), "--prediction", "prediction", "--target", "outcome"]
    assert modeltap_main([*argv, "--model-name", "loans"]) == 0
    return path


@contextlib.contextmanager
def _server(tmp_path: Path, factory: str, **settings: str) -> Iterator[RunningServer]:
    """`factory` (a monitored app of tests.support) under uvicorn, with these variables."""
    port = free_port()
    command = [*UVICORN, "--factory", factory, "--port", str(port)]
    env = server_environment(tmp_path / "run", **settings)
    with running_server(command, env, port, tmp_path / "app.log") as server:
        yield server


@contextlib.contextmanager
def _app(reference: Path, tmp_path: Path, monitor: str) -> Iterator[tuple[str, str]]:
    """The loans model with the middleware; yields (its base URL, its feedback URL)."""
    with _server(
        tmp_path,
        LOANS,
        MODELTAP_REFERENCE=str(reference),
        MODELTAP_MODEL_NAME="loans",
        MODELTAP_MONITOR=monitor,
    ) as server:
        yield server.url, server.url + "/modeltap/feedback"


@contextlib.contextmanager
def _sidecar(reference: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    command = [*UVICORN, "tests.support.fleet_model:app", "--port", str(port)]
    with (
        running_server(
            command, server_environment(tmp_path / "model-run"), port, tmp_path / "model.log"
        ) as model,
        sidecar_process(
            model.url, tmp_path, "--reference", str(reference), "--model-name", "loans"
        ) as sidecar,
    ):
        yield sidecar.url, sidecar.admin_url + "/feedback"


def _status(feedback_url: str) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(feedback_url.removesuffix("/feedback") + "/status", timeout=10).json()
    return status


def _exercise(url: str, feedback_url: str) -> None:
    rng = random.Random(11)
    rows_sent: list[tuple[str, int, dict[str, Any]]] = []
    with httpx.Client(timeout=10) as client:
        for i in range(REQUESTS):
            rows = drifted_rows(1 + i % 3, seed=i)
            answer = client.post(
                url + PREDICT, json={"instances": rows}, headers={"x-request-id": f"req-{i}"}
            )
            assert answer.status_code == 200
            assert "x-request-id" not in answer.headers  # modeltap adds nothing to responses
            rows_sent += [(f"req-{i}", r, row) for r, row in enumerate(rows)]
        truth = {(rid, r): _outcome(row, rng) for rid, r, row in rows_sent}
        labelled = rows_sent[: len(rows_sent) - 10]  # the last ten rows never get a label
        items = [{"request_id": rid, "row": r, "label": truth[(rid, r)]} for rid, r, _ in labelled]
        rng.shuffle(items)  # out of order
        half = len(items) // 2
        first = client.post(feedback_url, json=items[:half])
        assert first.status_code == 200, first.text
        assert first.json() == {"accepted": half, "duplicates": 0, "rejected": []}
        again = items[:5]  # duplicates
        conflict = {**items[5], "label": "approve" if items[5]["label"] != "approve" else "deny"}
        extra = [
            *items[half:],
            *again,
            conflict,
            {"request_id": "never-sent", "label": "deny"},
            {"label": "x"},
        ]
        ndjson = "\n".join(httpx.Response(200, json=i).text for i in extra).encode()
        second = client.post(feedback_url, content=ndjson, headers={"content-type": "application/x-ndjson"})
        assert second.status_code == 200, second.text
        n_rest = len(items) - half
        assert second.json() == {
            "accepted": n_rest + 1,  # the rest, and the unknown id (it waits for a prediction)
            "duplicates": 5,
            "rejected": [
                {"index": n_rest + 5, "reason": "conflict"},
                {"index": n_rest + 7, "reason": "no_join_key"},
            ],
        }

        expected_true = [truth[(rid, r)] for rid, r, _ in labelled]
        expected_pred = [decide(row) for _, _, row in labelled]

        def joined() -> bool:
            performance = _status(feedback_url)["performance"]
            return bool(performance) and performance[0]["total"]["labels"] == len(labelled)

        assert wait_for(joined, 30), _status(feedback_url)
        status = _status(feedback_url)
        [performance] = status["performance"]
        assert performance["model"] == "loans"
        assert performance["kind"] == "classification"
        assert performance["total"]["accuracy"] == accuracy_score(expected_true, expected_pred)
        assert performance["total"]["macro_f1"] == f1_score(expected_true, expected_pred, average="macro")
        assert performance["window"]["labels"] == len(labelled)
        assert status["labels"]["joined"] == len(labelled)
        assert status["labels"]["duplicate"] == 5
        assert status["labels"]["conflict"] == 1
        assert status["labels"]["early"] >= 1  # at least the unknown id waited

        # Access and limits.
        forwarded = client.post(feedback_url, json=[], headers={"x-forwarded-for": "203.0.113.9"})
        assert forwarded.status_code == 403
        assert "Bearer" in forwarded.text
        assert client.get(feedback_url).status_code == 405
        big = client.post(feedback_url, content=b"[" + b" " * (1024 * 1024) + b"]")
        assert big.status_code == 413
        assert client.post(feedback_url, content=b"{not json").status_code == 400


@pytest.mark.parametrize("monitor", ["inline", "process"])
def test_labels_fed_to_the_middleware_give_scikit_learns_numbers(
    reference: Path, tmp_path: Path, monitor: str
) -> None:
    with _app(reference, tmp_path, monitor) as (url, feedback_url):
        _exercise(url, feedback_url)


def test_labels_fed_to_the_sidecars_admin_port_give_scikit_learns_numbers(
    reference: Path, tmp_path: Path
) -> None:
    with _sidecar(reference, tmp_path) as (url, feedback_url):
        _exercise(url, feedback_url)


def test_a_drop_in_realised_accuracy_is_critical_against_the_reference_baseline(
    reference: Path, tmp_path: Path
) -> None:
    """Concept drift: inputs as usual, but the outcomes no longer follow the model's decisions.
    Input drift cannot see it; the realised accuracy against the profile's baseline does."""
    with _app(reference, tmp_path, "inline") as (url, feedback_url), httpx.Client(timeout=10) as client:
        rng = random.Random(3)
        items = []
        for i in range(150):
            rows = training_rows(2, seed=1000 + i)  # in distribution
            request_id = {"x-request-id": f"c-{i}"}
            assert client.post(url + PREDICT, json={"instances": rows}, headers=request_id).status_code == 200
            for r, row in enumerate(rows):
                wrong = [c for c in ("approve", "review", "deny") if c != decide(row)]
                label = decide(row) if rng.random() < 0.45 else rng.choice(wrong)
                items.append({"request_id": f"c-{i}", "row": r, "label": label})
        assert client.post(feedback_url, json=items).json()["accepted"] == 300

        def judged() -> bool:
            performance = _status(feedback_url)["performance"]
            return bool(performance) and performance[0]["window"]["labels"] == 300

        assert wait_for(judged, 30), _status(feedback_url)
        status = _status(feedback_url)
        [performance] = status["performance"]
        assert performance["baseline"]["source"] == "reference"
        assert performance["baseline"]["labels"] == 2000
        assert performance["baseline"]["accuracy"] > 0.8
        assert performance["window"]["accuracy"] < 0.55
        assert performance["level"] == "CRITICAL"
        assert status["level"] == "CRITICAL"
        assert all(f["level"] in ("OK", "INFO") for f in status["features"] if f["role"] == "input")

        # The labels themselves are compared with the reference's outcome distribution (prior
        # shift): scored like any feature, from the joined labels.
        def outcome() -> dict[str, Any]:
            features: list[dict[str, Any]] = _status(feedback_url)["features"]
            [feature] = [f for f in features if f["role"] == "label"]
            return feature

        # Scores are worked out at most every 5 s (this window's slots are longer).
        assert wait_for(lambda: outcome()["window_count"] == 300, 15), outcome()
        assert outcome()["name"] == "outcome"
        assert outcome()["psi"] is not None


@pytest.mark.parametrize("monitor", ["inline", "process"])
def test_modeltap_feedback_from_code_in_the_server_joins_like_the_endpoint(
    reference: Path, tmp_path: Path, monitor: str
) -> None:
    with _app(reference, tmp_path, monitor) as (url, feedback_url), httpx.Client(timeout=10) as client:
        rows = drifted_rows(1, seed=4)
        assert client.post(
            url + PREDICT, json={"instances": rows}, headers={"x-request-id": "api-1"}
        ).is_success
        answer = client.post(url + "/outcome", json={"request_id": "api-1", "label": decide(rows[0])})
        assert answer.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
        again = client.post(url + "/outcome", json={"request_id": "api-1", "label": decide(rows[0])})
        assert again.json() == {"accepted": 0, "duplicates": 1, "rejected": []}

        def joined() -> bool:
            return bool(_status(feedback_url)["labels"].get("joined") == 1)

        assert wait_for(joined, 30), _status(feedback_url)
        assert _status(feedback_url)["performance"][0]["total"]["accuracy"] == 1.0


def test_modeltap_feedback_uploads_a_csv_and_reports_rejections_by_line(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _app(reference, tmp_path, "process") as (url, feedback_url), httpx.Client(timeout=10) as client:
        expected_true, expected_pred = [], []
        labels = tmp_path / "labels.csv"
        rng = random.Random(8)
        with labels.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["request_id", "row", "label"])
            for i in range(400):
                rows = drifted_rows(1, seed=5000 + i)
                request_id = {"x-request-id": f"csv-{i}"}
                assert client.post(url + PREDICT, json={"instances": rows}, headers=request_id).is_success
                label = _outcome(rows[0], rng)
                writer.writerow([f"csv-{i}", 0, label])
                expected_true.append(label)
                expected_pred.append(decide(rows[0]))
            writer.writerow(["", 0, "deny"])  # line 402: no request id
        assert modeltap_main(["feedback", str(labels), "--url", feedback_url]) == 0
        printed = capsys.readouterr().out
        assert "sent 401 labels: 400 accepted, 0 duplicates, 1 rejected" in printed
        assert "line 402: bad_request_id" in printed

        def joined() -> bool:
            return bool(_status(feedback_url)["labels"].get("joined") == 400)

        assert wait_for(joined, 30), _status(feedback_url)
        accuracy = _status(feedback_url)["performance"][0]["total"]["accuracy"]
        assert accuracy == accuracy_score(expected_true, expected_pred)
    assert modeltap_main(["feedback", str(labels), "--url", "file:///etc/passwd"]) == 1


def test_confusion_counts_and_label_outcomes_reach_a_real_otlp_receiver(
    reference: Path, tmp_path: Path, http_receiver: OtlpHttpReceiver
) -> None:
    otlp = otlp_settings(http_receiver.endpoint, export_interval_ms=300)
    with (
        _server(
            tmp_path, LOANS, MODELTAP_REFERENCE=str(reference), MODELTAP_MODEL_NAME="loans", **otlp
        ) as server,
        httpx.Client(timeout=10) as client,
    ):
        rng = random.Random(2)
        cells: Counter[tuple[str, str]] = Counter()
        items = []
        for i in range(60):
            rows = drifted_rows(2, seed=7000 + i)
            headers = {"x-request-id": f"o-{i}"}
            assert client.post(server.url + PREDICT, json={"instances": rows}, headers=headers).is_success
            for r, row in enumerate(rows):
                label = _outcome(row, rng)
                cells[(label, decide(row))] += 1
                items.append({"request_id": f"o-{i}", "row": r, "label": label})
        items.append(dict(items[0]))  # one duplicate
        feedback_url = server.url + "/modeltap/feedback"
        assert client.post(feedback_url, json=items).json()["duplicates"] == 1

        def exported_cells() -> dict[tuple[str, str], float]:
            return {
                (
                    str(p.attributes["modeltap.label.true"]),
                    str(p.attributes["modeltap.label.predicted"]),
                ): float(p.value or 0)
                for p in http_receiver.latest_points("modeltap.performance.confusion", accepted_only=True)
            }

        assert wait_for(lambda: exported_cells() == dict(cells), 30), (exported_cells(), cells)
        point = http_receiver.latest_points("modeltap.performance.confusion", accepted_only=True)[0]
        assert point.attributes["modeltap.model.name"] == "loans"
        assert point.is_monotonic is True
        outcomes = {
            str(p.attributes["modeltap.label.outcome"]): p.value
            for p in http_receiver.latest_points("modeltap.labels", accepted_only=True)
        }
        assert outcomes["joined"] == 120
        assert outcomes["duplicate"] == 1


def test_scores_give_auc_log_loss_brier_and_an_estimate_before_the_labels(tmp_path: Path) -> None:
    """A covariate shift of a calibrated model: CBPE's estimate, there before any label, is
    within 0.02 of the accuracy the 5000 labels then give; AUC is within its stated bound of
    scikit-learn's, log loss and Brier equal it."""
    table = tmp_path / "validation.csv"
    validation = binary_model.rows(5000, (0.0, 0.0), seed=1)
    outcomes = binary_model.labels(validation, seed=2)
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["x1", "x2", "prediction", "scores", "outcome"])
        for row, outcome in zip(validation, outcomes, strict=True):
            p = round(binary_model.probability(row), 6)
            writer.writerow([row["x1"], row["x2"], "1" if p > 0.5 else "0", p, outcome])
    reference = tmp_path / "reference.json"
    argv = ["profile", str(table), "-o", str(reference), "--target", "outcome", "--prediction", "prediction"]
    assert modeltap_main([*argv, "--score", "scores", "--model-name", "risk"]) == 0

    shifted = binary_model.rows(5000, (1.0, 0.5), seed=3)
    truth = binary_model.labels(shifted, seed=4)
    settings = {"MODELTAP_REFERENCE": str(reference), "MODELTAP_MODEL_NAME": "risk"}
    with (
        _server(tmp_path, "tests.support.binary_model:monitored_app", **settings) as server,
        httpx.Client(timeout=10) as client,
    ):
        predicted: list[str] = []
        scores: list[float] = []
        for i in range(0, 5000, 50):
            answer = client.post(
                server.url + "/v1/models/risk:predict",
                json={"instances": shifted[i : i + 50]},
                headers={"x-request-id": f"s-{i}"},
            ).json()
            predicted += answer["predictions"]
            scores += answer["scores"]
        status_url = server.url + "/modeltap/status"

        def estimated() -> dict[str, Any]:
            performance = httpx.get(status_url, timeout=10).json()["performance"]
            return performance[0]["estimated"] if performance else {}

        assert wait_for(lambda: estimated().get("predictions") == 5000, 30), estimated()
        before = estimated()
        items = [
            {"request_id": f"s-{i - i % 50}", "row": i % 50, "label": label} for i, label in enumerate(truth)
        ]
        for i in range(0, 5000, 1000):
            assert (
                client.post(server.url + "/modeltap/feedback", json=items[i : i + 1000]).json()["accepted"]
                == 1000
            )

        def joined() -> bool:
            performance = httpx.get(status_url, timeout=10).json()["performance"]
            return bool(performance) and performance[0]["window"]["labels"] == 5000

        assert wait_for(joined, 30)
        [performance] = httpx.get(status_url, timeout=10).json()["performance"]
        exposition = httpx.get(server.url + "/modeltap/metrics", timeout=10).text
    # The exported score histograms give the same AUC (a backend can sum replicas' buckets).
    cumulative: dict[str, list[float]] = {"true": [], "false": []}
    for line in exposition.splitlines():
        if line.startswith("modeltap_performance_scores_bucket{"):
            side = re.search(r'modeltap_label_positive="(true|false)"', line)
            assert side is not None
            cumulative[side[1]].append(float(line.rsplit(" ", 1)[1]))
    per_bin = {k: np.diff(np.concatenate(([0.0], v))) for k, v in cumulative.items()}
    assert len(per_bin["true"]) == 100
    recomputed = auc_from_histograms(per_bin["true"], per_bin["false"])
    assert recomputed is not None
    assert recomputed[0] == pytest.approx(performance["total"]["auc"], abs=1e-12)
    window = performance["window"]
    realised = accuracy_score(truth, predicted)
    assert window["accuracy"] == realised
    assert abs(before["accuracy"] - realised) <= 0.02, (before, realised)
    assert abs(before["auc"] - roc_auc_score([t == "1" for t in truth], scores)) <= 0.03
    positive = [t == "1" for t in truth]
    assert abs(window["auc"] - roc_auc_score(positive, scores)) <= window["auc_bound"] + 1e-12
    assert window["log_loss"] == pytest.approx(log_loss(positive, scores), rel=1e-9)
    assert window["brier"] == pytest.approx(brier_score_loss(positive, scores), rel=1e-9)


def test_a_flood_of_labels_for_unknown_ids_keeps_memory_bounded_and_counts_every_one(
    reference: Path, tmp_path: Path
) -> None:
    settings = {
        "MODELTAP_REFERENCE": str(reference),
        "MODELTAP_MODEL_NAME": "loans",
        "MODELTAP_MONITOR": "inline",
    }
    with _server(tmp_path, LOANS, **settings) as server, httpx.Client(timeout=30) as client:
        feedback_url = server.url + "/modeltap/feedback"
        assert client.post(server.url + PREDICT, json={"instances": drifted_rows(1, seed=1)}).is_success
        # Its model's drift scores worked out once (the features are listed from them), so SciPy,
        # imported on first use, is already in `before`.
        assert wait_for(lambda: any(f["role"] == "input" for f in _status(feedback_url)["features"]), 10)
        before = rss_bytes(server.pid)
        sent = 0
        for batch in range(12):
            lines = [b'{"request_id":"flood-%d-%d","label":"deny"}' % (batch, i) for i in range(20_000)]
            answer = client.post(
                feedback_url, content=b"\n".join(lines), headers={"content-type": "application/x-ndjson"}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["accepted"] == 20_000
            sent += 20_000
        grown = rss_bytes(server.pid) - before
        assert wait_for(lambda: _status(feedback_url)["labels"]["early"] == sent, 10)  # snapshots lag
        labels = _status(feedback_url)["labels"]
    assert labels["early"] - labels.get("unmatched", 0) <= 10_000  # at most this many wait
    assert grown < 40 * 1024 * 1024, f"RSS grew {grown / 2**20:.1f} MiB for {sent} labels"


def test_a_rankers_mrr_and_ndcg_from_relevant_items_fed_back(tmp_path: Path) -> None:
    rng = random.Random(6)
    reciprocal: list[float] = []
    ndcgs: list[float] = []
    items = []
    ranker = "tests.support.ranker_model:monitored_app"
    with (
        _server(tmp_path, ranker, MODELTAP_MODEL_NAME="recs", MODELTAP_RANKING_K="3") as server,
        httpx.Client(timeout=10) as client,
    ):
        for i in range(40):
            users = [f"user-{i}-{j}" for j in range(3)]
            answer = client.post(
                server.url + "/v1/models/recs:predict",
                json={"instances": [{"user": u} for u in users]},
                headers={"x-request-id": f"q-{i}"},
            ).json()
            for row, ranked in enumerate(answer["predictions"]):
                relevant = rng.sample(ranker_model.ITEMS, k=rng.choice((1, 2)))
                items.append(
                    {
                        "request_id": f"q-{i}",
                        "row": row,
                        "label": relevant if len(relevant) > 1 else relevant[0],
                    }
                )
                hits = [p for p, item in enumerate(ranked, start=1) if item in relevant]
                reciprocal.append(1.0 / hits[0] if hits else 0.0)
                dcg = sum(1.0 / math.log2(p + 1) for p in hits if p <= 3)
                ideal = sum(1.0 / math.log2(p + 1) for p in range(1, min(3, len(relevant)) + 1))
                ndcgs.append(dcg / ideal)
        assert client.post(server.url + "/modeltap/feedback", json=items).json()["accepted"] == 120

        def joined() -> bool:
            performance = _status(server.url + "/modeltap/feedback")["performance"]
            return bool(performance) and performance[0]["total"]["labels"] == 120

        assert wait_for(joined, 30)
        [performance] = _status(server.url + "/modeltap/feedback")["performance"]
    assert performance["kind"] == "ranking"
    assert performance["total"]["mrr"] == pytest.approx(sum(reciprocal) / 120, rel=1e-12)
    assert performance["total"]["ndcg"] == pytest.approx(sum(ndcgs) / 120, rel=1e-12)
    assert performance["total"]["k"] == 3
