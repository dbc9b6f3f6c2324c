"""Drift monitoring end to end: a reference profile built with `build_profile`, a Starlette KServe V1
model server behind `ModelTapMiddleware`, traffic through httpx, and what comes out of every view:
`/modeltap/status`, OTLP/HTTP to a real receiver, and the Prometheus text of `/modeltap/metrics`.

STATS.md is the specification: alert levels (in-distribution OK, a 0.5 sigma shift WARNING or
CRITICAL), the export of cumulative fine-bucket histograms over the profile's `fine_edges` with
`sum` unset, and the "mergeable export" property (PSI, JS and KS recomputed from the exported
bucket counts equal the exported per-replica gauges when the window covers all traffic).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modeltap import ExportConfig, ModelTapConfig, ModelTapMiddleware
from modeltap.reference.builder import build_profile
from modeltap.reference.document import write_profile
from modeltap.stats.scores import coarse_counts, js_distance, ks_binned, psi
from tests.support.otlp_receiver import MetricPoint, OtlpHttpReceiver, flatten_metrics
from tests.support.tapping import PROMETHEUS_LABEL

pytestmark = [pytest.mark.usefixtures("clean_otel_env"), pytest.mark.timeout(60)]

MODEL = "m"
PREDICT_PATH = f"/v1/models/{MODEL}:predict"
PLANS = ("basic", "pro", "enterprise")
REFERENCE_PLAN_SHARES = (0.5, 0.3, 0.2)
SHIFTED_PLAN_SHARES = (0.3, 0.3, 0.4)
REFERENCE_ROWS = 20_000
REQUESTS = 250
ROWS_PER_REQUEST = 10
SENT_ROWS = REQUESTS * ROWS_PER_REQUEST
# In-distribution traffic sends `a` as JSON null in every 125th row and `b` in every 50th (never
# `plan`: the reference has no missing plan, so a missing share would be a real change of `plan`).
NULL_EVERY = {"a": 125, "b": 50}
NULLS = {"a": SENT_ROWS // NULL_EVERY["a"], "b": SENT_ROWS // NULL_EVERY["b"], "plan": 0, "prediction": 0}
WINDOW_S = 900.0  # the default window: 15 slots x 60 s
INPUTS = ("a", "b", "plan")
CUMULATIVE = "AGGREGATION_TEMPORALITY_CUMULATIVE"
SCORE_METHODS = {"psi": "psi", "js": "js", "ks": "ks_statistic"}

FEATURE_VALUES = "modeltap.feature.values"
DRIFT_SCORE = "modeltap.drift.score"
DRIFT_PVALUE = "modeltap.drift.pvalue"
DRIFT_LEVEL = "modeltap.drift.level"
LATENCY_QUANTILE = "modeltap.latency.quantile"
FEATURE_MISSING = "modeltap.feature.missing"
FEATURE_CATEGORIES = "modeltap.feature.categories"
LEVEL_NAMES = ("OK", "INFO", "WARNING", "CRITICAL", "EMERGENCY")

Row = dict[str, float | str | None]


# ---- the model and its reference ------------------------------------------------------------------


def model_output(a: float | None, b: float | None, plan: str) -> float:
    """The 'model': a deterministic score of the inputs (a missing value counts as its mean)."""
    return 0.5 * (0.0 if a is None else a) + 0.1 * (5.0 if b is None else b) + (0.3 if plan == "pro" else 0.0)


def unpack(row: Row) -> tuple[float | None, float | None, str]:
    a, b, plan = row["a"], row["b"], row["plan"]
    assert a is None or isinstance(a, float)
    assert b is None or isinstance(b, float)
    assert isinstance(plan, str)
    return a, b, plan


async def predict(request: Request) -> Response:
    document = json.loads(await request.body())
    rows: list[Row] = document["instances"]
    predictions = []
    for row in rows:
        predictions.append(model_output(*unpack(row)))
    return JSONResponse({"predictions": predictions})


def model_app() -> Starlette:
    return Starlette(routes=[Route("/v1/models/{model}:predict", predict, methods=["POST"])])


@dataclass(frozen=True)
class Reference:
    path: Path
    document: dict[str, Any]

    @property
    def id(self) -> str:
        profile_id = self.document["id"]
        assert isinstance(profile_id, str)
        return profile_id

    def feature(self, name: str) -> dict[str, Any]:
        matches = [f for f in self.document["features"] if f["name"] == name]
        assert len(matches) == 1, name
        feature = matches[0]
        assert isinstance(feature, dict)
        return feature

    def fine_edges(self, name: str) -> list[float]:
        return [float(e) for e in self.feature(name)["fine_edges"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    rng = np.random.default_rng(20240531)
    a = rng.normal(0.0, 1.0, REFERENCE_ROWS)
    b = rng.normal(5.0, 2.0, REFERENCE_ROWS)
    plan = rng.choice(PLANS, size=REFERENCE_ROWS, p=REFERENCE_PLAN_SHARES).tolist()
    prediction = np.array([model_output(x, y, p) for x, y, p in zip(a, b, plan, strict=True)])
    document = build_profile(
        {"a": a, "b": b, "plan": plan, "prediction": prediction}, prediction="prediction", model_name=MODEL
    )
    path = tmp_path_factory.mktemp("reference") / "reference.json"
    write_profile(document, path)
    kinds = {(f["name"], f["role"], f["kind"]) for f in document["features"]}
    assert kinds == {
        ("a", "input", "numeric"),
        ("b", "input", "numeric"),
        ("plan", "input", "categorical"),
        ("prediction", "output", "numeric"),
    }
    return Reference(path, document)


# ---- traffic ------------------------------------------------------------------------------------


def make_rows(
    seed: int, a_shift: float, plan_shares: Sequence[float], null_every: Mapping[str, int]
) -> list[Row]:
    rng = np.random.default_rng(seed)
    a = rng.normal(a_shift, 1.0, SENT_ROWS)
    b = rng.normal(5.0, 2.0, SENT_ROWS)
    plan = rng.choice(PLANS, size=SENT_ROWS, p=plan_shares)
    rows: list[Row] = []
    for i in range(SENT_ROWS):
        missing_a = "a" in null_every and i % null_every["a"] == 0
        missing_b = "b" in null_every and i % null_every["b"] == 0
        rows.append(
            {
                "a": None if missing_a else float(a[i]),
                "b": None if missing_b else float(b[i]),
                "plan": str(plan[i]),
            }
        )
    return rows


def in_distribution_rows() -> list[Row]:
    return make_rows(7, 0.0, REFERENCE_PLAN_SHARES, NULL_EVERY)


def shifted_rows() -> list[Row]:
    return make_rows(8, 0.5, SHIFTED_PLAN_SHARES, {})


@dataclass
class Observed:
    middleware: ModelTapMiddleware
    status: dict[str, Any]
    metrics_text: str


@pytest.fixture
def receiver() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as rx:
        yield rx


class RunTraffic(Protocol):
    def __call__(self, rows: list[Row], instance_id: str | None = None) -> Observed: ...


@pytest.fixture
def run_traffic(reference: Reference, receiver: OtlpHttpReceiver) -> Iterator[RunTraffic]:
    """Send rows (10 per request) through a fresh middleware exporting to `receiver`, flush, then
    read `/modeltap/status` and `/modeltap/metrics` through the same middleware."""
    created: list[ModelTapMiddleware] = []

    def run(rows: list[Row], instance_id: str | None = None) -> Observed:
        export = ExportConfig(
            endpoint=receiver.endpoint,
            protocol="http/protobuf",
            timeout_s=2.0,
            metric_export_interval_s=60.0,  # data leaves only on flush
            traces_enabled=False,
            shutdown_timeout_s=1.0,
            service_name="drift-e2e",
            # Taps in one process share the SDK's per-process id; a replica test names its own.
            resource_attributes={"service.instance.id": instance_id} if instance_id else {},
        )
        middleware = ModelTapMiddleware(
            model_app(),
            config=ModelTapConfig(monitor="inline", export=export),
            model_name=MODEL,
            reference=str(reference.path),
            worker_cpu_budget=0,
        )
        created.append(middleware)

        async def send_all() -> None:
            transport = httpx.ASGITransport(app=middleware)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                for start in range(0, len(rows), ROWS_PER_REQUEST):
                    batch = rows[start : start + ROWS_PER_REQUEST]
                    response = await client.post(PREDICT_PATH, json={"instances": batch})
                    assert response.status_code == 200, response.text
                    assert len(response.json()["predictions"]) == len(batch)

        async def views() -> tuple[dict[str, Any], str]:
            transport = httpx.ASGITransport(app=middleware)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                status = await client.get("/modeltap/status")
                assert status.status_code == 200, status.text
                metrics = await client.get("/modeltap/metrics")
                assert metrics.status_code == 200, metrics.text
                document = status.json()
                assert isinstance(document, dict)
                return document, metrics.text

        asyncio.run(send_all())
        assert middleware.tap.flush(10.0), "flush did not finish in time"
        status, text = asyncio.run(views())
        return Observed(middleware, status, text)

    yield run
    for middleware in created:
        middleware.tap.shutdown()


def features_by_name(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in status["features"]}


def column(rows: Sequence[Row], name: str) -> list[float]:
    values = [row[name] for row in rows]
    return [v for v in values if isinstance(v, float)]


def predictions(rows: Sequence[Row]) -> list[float]:
    out = []
    for row in rows:
        out.append(model_output(*unpack(row)))
    return out


def exported(receiver: OtlpHttpReceiver, name: str) -> list[MetricPoint]:
    receiver.wait_for(lambda r: r.latest_points(name, accepted_only=True), description=f"{name} exported")
    return receiver.latest_points(name, accepted_only=True)


def by_feature(points: Sequence[MetricPoint], **extra: str) -> dict[str, MetricPoint]:
    """Points carrying `modeltap.feature.name`, keyed by it, filtered on `extra` attributes."""
    out: dict[str, MetricPoint] = {}
    for point in points:
        name = point.attributes.get("modeltap.feature.name")
        if name is None or any(point.attributes.get(k) != v for k, v in extra.items()):
            continue
        assert isinstance(name, str)
        assert name not in out, f"two points for feature {name!r} with {extra}"
        out[name] = point
    return out


def psi_map(fine_edges: Sequence[float], psi_edges: Sequence[float]) -> np.ndarray:
    """Fine bucket -> PSI bucket, from the edges alone (same upper-inclusive rule for both)."""
    inner = np.searchsorted(np.asarray(psi_edges), np.asarray(fine_edges), side="left")
    return np.append(inner, len(psi_edges)).astype(np.int64)


# ---- 1. in-distribution traffic: everything OK ----------------------------------------------------


def test_in_distribution_traffic_is_ok_on_status(reference: Reference, run_traffic: RunTraffic) -> None:
    observed = run_traffic(in_distribution_rows())
    status = observed.status

    assert status["reference"]["id"] == reference.id
    assert status["window_s"] == WINDOW_S
    assert status["requests"]["total"] == REQUESTS
    features = features_by_name(status)
    assert set(features) == {*INPUTS, "prediction"}
    for name, feature in features.items():
        assert feature["monitored"] is True, name
        assert feature["level"] == "OK", (name, feature)
        assert feature["psi"] is not None, name
        assert feature["js"] is not None, name
        if feature["kind"] == "numeric":
            assert feature["ks_statistic"] is not None, name
            assert feature["ks_pvalue"] is not None, name
            assert feature["chi2_pvalue"] is None, name
        else:
            assert feature["chi2_pvalue"] is not None, name
            assert feature["ks_statistic"] is None, name
            assert feature["ks_pvalue"] is None, name
    assert features["plan"]["kind"] == "categorical"
    for name, nulls in NULLS.items():
        assert features[name]["missing"] == nulls, name
        assert features[name]["window_count"] == SENT_ROWS - nulls, name
    assert status["level"] == "OK"

    latency = status["latency_s"]
    assert latency["count"] == REQUESTS
    assert None not in (latency["p50"], latency["p95"], latency["p99"], latency["max"])
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]


# ---- 2. shifted traffic: a and plan alert, b stays OK ---------------------------------------------


def test_shifted_traffic_raises_a_and_plan_but_not_b(run_traffic: RunTraffic) -> None:
    observed = run_traffic(shifted_rows())
    status = observed.status
    features = features_by_name(status)

    assert features["a"]["level"] in ("WARNING", "CRITICAL"), features["a"]
    assert features["plan"]["level"] in ("WARNING", "CRITICAL"), features["plan"]
    assert features["b"]["level"] == "OK", features["b"]
    # STATS.md: a 0.5 sigma shift gives PSI ~ 0.25; the plan shares chosen give PSI ~ 0.24.
    assert features["a"]["psi"] > 0.15
    assert features["plan"]["psi"] > 0.15
    assert features["b"]["psi"] < 0.05
    levels = [LEVEL_NAMES.index(f["level"]) for f in features.values()]
    assert status["level"] == LEVEL_NAMES[max(levels)]
    assert status["models"][0]["level"] == status["level"]


# ---- 3. OTLP export: histograms, gauges, counters --------------------------------------------------


def test_otlp_export_carries_histograms_scores_levels_and_counters(
    reference: Reference, run_traffic: RunTraffic, receiver: OtlpHttpReceiver
) -> None:
    rows = in_distribution_rows()
    observed = run_traffic(rows)
    status = observed.status
    features = features_by_name(status)
    version = status["models"][0]["version"]
    model_attrs = {"modeltap.model.name": MODEL, "modeltap.model.version": version}
    sent = {"a": column(rows, "a"), "b": column(rows, "b"), "prediction": predictions(rows)}
    roles = {"a": "input", "b": "input", "plan": "input", "prediction": "output"}

    # Feature histograms over the profile's fine edges.
    histograms = by_feature(exported(receiver, FEATURE_VALUES))
    assert set(histograms) == {"a", "b", "prediction"}
    for name, point in histograms.items():
        edges = reference.fine_edges(name)
        assert point.kind == "histogram"
        assert point.temporality == CUMULATIVE
        assert point.explicit_bounds == edges, name
        assert len(point.bucket_counts) == len(edges) + 1
        assert point.sum is None, f"{name}: sum must be unset (values can be negative)"
        assert sum(point.bucket_counts) == point.count == len(sent[name]), name
        # Bucket assignment is exact: the upper-inclusive rule on the values sent.
        expected = np.bincount(np.searchsorted(edges, sent[name], side="left"), minlength=len(edges) + 1)
        assert point.bucket_counts == expected.tolist(), name
        assert point.attributes == {
            **model_attrs,
            "modeltap.feature.name": name,
            "modeltap.feature.role": roles[name],
            "modeltap.reference.id": reference.id,
        }
    for name, point in histograms.items():
        assert point.count == SENT_ROWS - NULLS[name], name
        assert 0 < point.start_time_unix_nano <= point.time_unix_nano, name
    # "sum unset" on the wire, not just decoded as None.
    wire = [
        data_point
        for request in receiver.metric_requests(accepted_only=True)[-1:]
        for resource_metrics in request.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
        if metric.name == FEATURE_VALUES
        for data_point in metric.histogram.data_points
    ]
    assert len(wire) == 3
    assert not any(data_point.HasField("sum") for data_point in wire)

    # Score gauges equal the /status numbers.
    score_points = exported(receiver, DRIFT_SCORE)
    assert {p.attributes["modeltap.drift.method"] for p in score_points} == set(SCORE_METHODS)
    for method, field in SCORE_METHODS.items():
        points = by_feature(score_points, **{"modeltap.drift.method": method})
        expected_names = {n for n, f in features.items() if f[field] is not None}
        assert set(points) == expected_names, method
        for name, point in points.items():
            assert point.kind == "gauge"
            assert point.value == features[name][field], (name, method)
            assert point.attributes["modeltap.reference.id"] == reference.id
            assert point.attributes["modeltap.feature.role"] == roles[name]
            assert point.attributes["modeltap.model.name"] == MODEL
            assert point.attributes["modeltap.model.version"] == version
    assert set(by_feature(score_points, **{"modeltap.drift.method": "ks"})) == {"a", "b", "prediction"}
    assert set(by_feature(score_points, **{"modeltap.drift.method": "psi"})) == set(roles)

    # p-values: KS for numeric features, chi-square for the categorical one.
    pvalue_points = exported(receiver, DRIFT_PVALUE)
    ks = by_feature(pvalue_points, **{"modeltap.drift.test": "ks"})
    chi2 = by_feature(pvalue_points, **{"modeltap.drift.test": "chi2"})
    assert set(ks) == {"a", "b", "prediction"}
    assert set(chi2) == {"plan"}
    assert len(pvalue_points) == 4
    for name, point in ks.items():
        assert point.value == features[name]["ks_pvalue"], name
    assert chi2["plan"].value == features["plan"]["chi2_pvalue"]

    # Levels: one per feature plus one overall point without feature attributes.
    level_points = exported(receiver, DRIFT_LEVEL)
    per_feature = by_feature(level_points)
    assert set(per_feature) == set(roles)
    for name, point in per_feature.items():
        assert point.value == float(LEVEL_NAMES.index(features[name]["level"])), name
    overall = [p for p in level_points if "modeltap.feature.name" not in p.attributes]
    assert len(overall) == 1
    assert overall[0].attributes == {**model_attrs, "modeltap.reference.id": reference.id}
    assert overall[0].value == float(LEVEL_NAMES.index(status["level"])) == 0.0

    # Latency quantiles, in seconds, equal to /status.
    quantiles = exported(receiver, LATENCY_QUANTILE)
    assert {p.unit for p in quantiles} == {"s"}
    by_q = {p.attributes["modeltap.quantile"]: p for p in quantiles}
    assert set(by_q) == {"0.5", "0.95", "0.99"}
    assert len(quantiles) == 3
    for q, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
        assert by_q[q].value == status["latency_s"][key], q
        assert by_q[q].attributes == {**model_attrs, "modeltap.quantile": q}

    # Missing counters: the number of nulls sent per feature.
    missing = by_feature(exported(receiver, FEATURE_MISSING))
    assert set(missing) == set(roles)
    for name, point in missing.items():
        assert point.kind == "sum"
        assert point.temporality == CUMULATIVE
        assert point.is_monotonic is True
        assert point.value == NULLS[name], name
        assert point.attributes["modeltap.reference.id"] == reference.id

    # Categorical counts: exactly the reference's vocabulary, __other__ and __missing__, so a
    # backend can sum replicas and recompute categorical drift (never a raw payload value).
    categories = exported(receiver, FEATURE_CATEGORIES)
    vocabulary = reference.feature("plan")["vocabulary"]
    plans = [row["plan"] for row in rows]
    counted = {category: plans.count(category) for category in vocabulary}
    counted["__other__"] = sum(1 for plan in plans if plan is not None and plan not in vocabulary)
    counted["__missing__"] = plans.count(None)
    assert {p.attributes["modeltap.feature.category"]: p.value for p in categories} == counted
    for point in categories:
        assert point.kind == "sum"
        assert point.temporality == CUMULATIVE
        assert point.is_monotonic is True
        assert {k: v for k, v in point.attributes.items() if k != "modeltap.feature.category"} == {
            **model_attrs,
            "modeltap.feature.name": "plan",
            "modeltap.feature.role": "input",
            "modeltap.reference.id": reference.id,
        }


# ---- 4. mergeable export: scores recomputed from the exported buckets ----------------------------


def test_scores_recomputed_from_exported_buckets_match_exported_gauges(
    reference: Reference, run_traffic: RunTraffic, receiver: OtlpHttpReceiver
) -> None:
    run_traffic(in_distribution_rows())
    histograms = by_feature(exported(receiver, FEATURE_VALUES))
    score_points = exported(receiver, DRIFT_SCORE)
    scores = {
        method: {n: p.value for n, p in by_feature(score_points, **{"modeltap.drift.method": method}).items()}
        for method in SCORE_METHODS
    }
    ks_pvalues = {
        n: p.value
        for n, p in by_feature(exported(receiver, DRIFT_PVALUE), **{"modeltap.drift.test": "ks"}).items()
    }
    for name in ("a", "b", "prediction"):
        feature = reference.feature(name)
        mapping = psi_map(feature["fine_edges"], feature["psi_edges"])
        assert len(set(mapping.tolist())) == len(feature["psi_edges"]) + 1  # 10 deciles + 2 out of range
        ref_fine = np.asarray(feature["counts"], dtype=np.int64)
        cur_fine = np.asarray(histograms[name].bucket_counts, dtype=np.int64)
        ref_coarse = coarse_counts(ref_fine, mapping)
        cur_coarse = coarse_counts(cur_fine, mapping)

        recomputed_psi = psi(ref_coarse, cur_coarse)
        recomputed_js = js_distance(ref_coarse, cur_coarse)
        recomputed_ks = ks_binned(ref_fine, cur_fine)
        assert recomputed_psi is not None, name
        assert recomputed_js is not None, name
        assert recomputed_ks is not None, name
        exported_psi = scores["psi"][name]
        exported_js = scores["js"][name]
        exported_ks = scores["ks"][name]
        assert isinstance(exported_psi, float)
        assert isinstance(exported_js, float)
        assert isinstance(exported_ks, float)
        assert recomputed_psi == pytest.approx(exported_psi, abs=1e-9), name
        assert recomputed_js == pytest.approx(exported_js, abs=1e-9), name
        assert recomputed_ks[0] == pytest.approx(exported_ks, abs=1e-9), name
        exported_p = ks_pvalues[name]
        assert isinstance(exported_p, float)
        assert recomputed_ks[1] == pytest.approx(exported_p, abs=1e-9), name


def test_histograms_of_two_replicas_sum_to_the_merged_stream(
    reference: Reference, run_traffic: RunTraffic, receiver: OtlpHttpReceiver
) -> None:
    """STATS.md "Export (mergeable across replicas)": a backend summing the replicas' histograms
    gets the counts, hence the PSI, of the concatenated stream."""
    rows = in_distribution_rows()
    half = len(rows) // 2
    run_traffic(rows[:half], instance_id="replica-1")
    run_traffic(rows[half:], instance_id="replica-2")
    latest: dict[object, dict[str, MetricPoint]] = {}
    for request in receiver.metric_requests(accepted_only=True):
        points = flatten_metrics(request, FEATURE_VALUES)
        if points:
            latest[points[0].resource["service.instance.id"]] = by_feature(points)
    assert set(latest) == {"replica-1", "replica-2"}
    sent = {"a": column(rows, "a"), "b": column(rows, "b"), "prediction": predictions(rows)}
    for name in ("a", "b", "prediction"):
        feature = reference.feature(name)
        edges = reference.fine_edges(name)
        summed = np.sum([np.asarray(replica[name].bucket_counts) for replica in latest.values()], axis=0)
        merged = np.bincount(np.searchsorted(edges, sent[name], side="left"), minlength=len(edges) + 1)
        assert summed.tolist() == merged.tolist(), name
        mapping = psi_map(feature["fine_edges"], feature["psi_edges"])
        ref_coarse = coarse_counts(np.asarray(feature["counts"], dtype=np.int64), mapping)
        merged_psi = psi(ref_coarse, coarse_counts(merged, mapping))
        summed_psi = psi(ref_coarse, coarse_counts(summed.astype(np.int64), mapping))
        assert merged_psi is not None, name
        assert summed_psi == pytest.approx(merged_psi, abs=1e-12), name


# ---- 5. Prometheus text -------------------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def samples(text: str, metric: str) -> list[tuple[dict[str, str], str]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match is not None, f"unparseable exposition line: {line!r}"
        if match.group(1) == metric:
            labels = dict(PROMETHEUS_LABEL.findall(match.group(2) or ""))
            out.append((labels, match.group(3)))
    return out


def test_prometheus_text_has_stable_le_buckets_and_drift_gauges(
    reference: Reference, run_traffic: RunTraffic
) -> None:
    rows = in_distribution_rows()
    observed = run_traffic(rows)
    text = observed.metrics_text

    buckets = samples(text, "modeltap_feature_values_bucket")
    counts = {
        labels["modeltap_feature_name"]: int(value)
        for labels, value in samples(text, "modeltap_feature_values_count")
    }
    assert set(counts) == {"a", "b", "prediction"}
    for name in ("a", "b", "prediction"):
        series = [(labels, value) for labels, value in buckets if labels["modeltap_feature_name"] == name]
        les = [labels["le"] for labels, _ in series]
        assert les == [repr(float(edge)) for edge in reference.fine_edges(name)] + ["+Inf"], name
        cumulative = [int(value) for _, value in series]
        assert all(x <= y for x, y in itertools.pairwise(cumulative)), name
        assert cumulative[-1] == counts[name] == SENT_ROWS - NULLS[name], name
        for labels, _ in series:
            assert labels["modeltap_reference_id"] == reference.id
            assert labels["modeltap_model_name"] == MODEL
    assert not samples(text, "modeltap_feature_values_sum"), "feature histograms must not expose a sum"

    scores = samples(text, "modeltap_drift_score")
    assert {labels["modeltap_drift_method"] for labels, _ in scores} == set(SCORE_METHODS)
    levels = samples(text, "modeltap_drift_level")
    assert {labels.get("modeltap_feature_name") for labels, _ in levels} == {*INPUTS, "prediction", None}
    assert all(math.isfinite(float(value)) for _, value in (*scores, *levels))
    latency = samples(text, "modeltap_latency_quantile_seconds")
    assert {labels["modeltap_quantile"] for labels, _ in latency} == {"0.5", "0.95", "0.99"}
