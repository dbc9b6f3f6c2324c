"""`modeltap rules`: the document, `promtool check rules`, and `promtool test rules` with fixed
series from three replicas, where the recorded PSI, Jensen-Shannon and level must equal modeltap's
own functions on the summed counts (with `le` spelled as Prometheus 2 and as Prometheus 3 store
it), and the drift alert must fire for the shifted features only; and with another service's
OpenTelemetry HTTP series and decoding skips beside modeltap's, which must fire nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy.stats import chi2

from modeltap.cli import main as modeltap_main
from modeltap.export.prometheus_text import format_le
from modeltap.fleet import names
from modeltap.fleet import rules as r
from modeltap.fleet.reference_series import feature_constants
from modeltap.reference import build_profile
from modeltap.reference.document import ReferenceFeature, ReferenceProfile, parse_reference, write_profile
from modeltap.stats.scores import Thresholds, coarse_counts, js_distance, psi, psi_noise_floor
from tests.support.backends import require_promtool

RNG = np.random.default_rng(20261205)
CATEGORIES = ("a", "b", "c", "d")


DOCUMENT = build_profile(
    {
        "x": RNG.normal(0.0, 1.0, 4000),
        "y": RNG.normal(5.0, 2.0, 4000),
        "c": RNG.choice(CATEGORIES, 4000, p=(0.4, 0.3, 0.2, 0.1)),
        "k": RNG.integers(18, 90, 4000),  # integer-valued: integer PSI bounds (`le="25"`)
    },
    model_name="m",
)
PROFILE = parse_reference(DOCUMENT)


def _replica(seed: int, size: int) -> dict[str, np.ndarray]:
    """One replica's values: x shifted by 0.6 sigma, y and k as in the reference, c's mix changed."""
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(0.6, 1.0, size),
        "y": rng.normal(5.0, 2.0, size),
        "c": rng.choice((*CATEGORIES, "zz"), size, p=(0.1, 0.2, 0.3, 0.3, 0.1)),
        "k": rng.integers(18, 90, size),
    }


REPLICAS = {"r1": _replica(1, 700), "r2": _replica(2, 450), "r3": _replica(3, 300)}
YOUNG = "r3"  # starts 4m15s-4m30s into the test, inside the window read at 5m
# Requests per minute (answered 200, answered 503) of each replica; the young one's in its life.
REQUESTS = {"r1": (120, 6), "r2": (80, 0), "r3": (40, 2)}


def _stored_le(bound: float, prometheus: int) -> str:
    """`le` as Prometheus stores a scraped bucket bound: Go's spelling in Prometheus 2; in
    Prometheus 3 its float form, which adds ".0" where Go's spelling has neither "." nor "e"
    (`labels.FormatOpenMetricsFloat`: `25` -> `25.0`, `+Inf` and `2.5e+06` unchanged)."""
    text = format_le(bound)
    if prometheus >= 3 and text[-1].isdigit() and not any(c in text for c in ".e"):
        text += ".0"
    return text


def _fine_counts(feature: ReferenceFeature, values: np.ndarray) -> np.ndarray:
    edges = np.asarray(feature.fine_edges)
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)


def _category_counts(feature: ReferenceFeature, values: np.ndarray) -> np.ndarray:
    index = {v: i for i, v in enumerate(feature.vocabulary)}
    other = len(feature.vocabulary)
    return np.bincount([index.get(str(v), other) for v in values], minlength=other + 2)


def _expected(feature: ReferenceFeature) -> tuple[float, float, int]:
    """PSI, JS and level of the replicas' summed counts, by modeltap's functions (as DriftState)."""
    current: np.ndarray
    if feature.kind == "numeric":
        current = np.sum([_fine_counts(feature, v[feature.name]) for v in REPLICAS.values()], axis=0)
        index = np.asarray(feature.psi_index)
        reference = coarse_counts(np.asarray(feature.counts), index)
        current = coarse_counts(np.asarray(current), index)
        window_values = int(current.sum())
    else:
        current = np.sum([_category_counts(feature, v[feature.name]) for v in REPLICAS.values()], axis=0)
        reference = np.asarray((*feature.counts, feature.missing or 0))
        window_values = int(current[:-1].sum())
    p, j = psi(reference, current), js_distance(reference, current)
    assert p is not None
    assert j is not None
    tau = psi_noise_floor(len(reference), int(reference.sum()), int(current.sum()))
    t = Thresholds()
    level = (
        0
        if window_values < t.min_samples
        else 3
        if p > max(t.psi_critical, tau)
        else 2
        if p > max(t.psi_warning, tau)
        else 0
    )
    return p, j, level


def _series(cumulative: bool, prometheus: int = 2) -> list[dict[str, str]]:
    """Input series of the replicas. Cumulative: the counts, constant. Windowed: counters that
    grow by the counts every minute (samples every 15 s), so increase over 1m gives the counts;
    the young replica's series appear inside the window with their counts, which must count whole
    (increase() alone would lose them). Bucket bounds spelled as that Prometheus version stores
    them."""
    out = []
    base = {names.MODEL: "m", names.VERSION: "1", names.REFERENCE: PROFILE.id}

    def add(metric: str, labels: dict[str, str], count: int) -> None:
        text = ", ".join(f'{k}="{v}"' for k, v in labels.items())
        if labels["instance"] == YOUNG:  # absent one window before the evaluation: taken whole
            values = f"_x17 {count}+0x22"
        else:
            values = f"{count}+0x40" if cumulative else f"0+{count / 4!r}x40"
        out.append({"series": f"{metric}{{{text}}}", "values": values})

    for instance, (ok, failed) in REQUESTS.items():
        for status, count in (("200", ok), ("503", failed)):
            labels = {names.MODEL: "m", names.VERSION: "1", names.STATUS: status, "instance": instance}
            text = ", ".join(f'{k}="{v}"' for k, v in labels.items())
            shape = f"_x17 {count}+0x22" if instance == YOUNG else f"0+{count / 4!r}x40"
            out.append({"series": f"{names.DURATION_COUNT}{{{text}}}", "values": shape})
    for instance, values in REPLICAS.items():
        for feature in PROFILE.features:
            labels = {**base, names.ROLE: feature.role, names.FEATURE: feature.name, "instance": instance}
            if feature.kind == "numeric":
                cumulative_counts = np.cumsum(_fine_counts(feature, values[feature.name]))
                bounds = [_stored_le(b, prometheus) for b in feature.fine_edges] + ["+Inf"]
                for le, count in zip(bounds, cumulative_counts, strict=True):
                    add(names.FEATURE_BUCKET, {**labels, "le": le}, int(count))
            else:
                counts = _category_counts(feature, values[feature.name])
                for category, count in zip(
                    (*feature.vocabulary, "__other__", "__missing__"), counts, strict=True
                ):
                    add(names.FEATURE_CATEGORIES, {**labels, names.CATEGORY: category}, int(count))
    return out


def test_constants_follow_the_reference() -> None:
    constants = {c.name: c for c in feature_constants(PROFILE, 1e-3)}
    assert set(constants) == {"x", "y", "c", "k"}
    for feature in PROFILE.features:
        c = constants[feature.name]
        assert sum(b.share for b in c.bins) == pytest.approx(1.0, abs=1e-12)
        assert c.noise_factor == pytest.approx(float(chi2.ppf(1 - 1e-3, len(c.bins) - 1)), rel=1e-15)
        if feature.kind == "numeric":
            assert [b.le for b in c.bins] == [format_le(e) for e in feature.psi_edges] + ["+Inf"]
            assert [b.prev_le for b in c.bins] == ["", *(b.le for b in c.bins[:-1])]
            assert c.size == sum(feature.counts)
        else:
            assert [b.category for b in c.bins] == [*feature.vocabulary, "__other__", "__missing__"]
            assert c.size == sum(feature.counts) + (feature.missing or 0)


def _generate(tmp_path: Path, *extra: str) -> dict[str, Any]:
    reference = tmp_path / "reference.json"
    write_profile(DOCUMENT, reference)
    output = tmp_path / "rules.yml"
    assert modeltap_main(["rules", "--reference", str(reference), "-o", str(output), *extra]) == 0
    document: dict[str, Any] = yaml.safe_load(output.read_text())
    return document


def test_the_rule_file_has_the_groups_records_and_alerts_users_expect(tmp_path: Path) -> None:
    document = _generate(tmp_path, "--window", "5m")
    groups = {g["name"]: g["rules"] for g in document["groups"]}
    assert list(groups) == ["modeltap-reference", "modeltap-fleet", "modeltap-alerts"]
    records = {rule["record"] for rule in groups["modeltap-fleet"]}
    for name in (r.PSI, r.JS, r.LEVEL, r.ERROR_RATIO, r.DROP_RATE, r.VIOLATION_RATE,
                 *(r.LATENCY.format(q) for q in ("50", "95", "99"))):  # fmt: skip
        assert name in records
    assert all("[5m]" in rule["expr"] for rule in groups["modeltap-fleet"] if "rate(" in rule["expr"])
    alerts = groups["modeltap-alerts"]
    assert [a["alert"] for a in alerts] == [
        "ModelTapFeatureDrift", "ModelTapFeatureDrift", "ModelTapLatencyHigh",
        "ModelTapErrorRateHigh", "ModelTapTelemetryDropping",
    ]  # fmt: skip
    assert [a["labels"]["severity"] for a in alerts[:2]] == ["critical", "warning"]
    for alert in alerts:
        assert alert["for"]
        assert alert["annotations"]["summary"]
        assert alert["annotations"]["runbook_url"].startswith("https://")
        assert "#" + alert["alert"].lower() in alert["annotations"]["runbook_url"]


def _promtool_test(tmp_path: Path, input_series: list[dict[str, str]], tests: list[dict[str, Any]]) -> None:
    """`promtool test rules` of tmp_path/rules.yml with these input series and expression tests."""
    promtool = require_promtool()
    unit = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": input_series, "promql_expr_test": tests}],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(unit), encoding="utf-8")
    tested = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path,
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert tested.returncode == 0, (tested.stdout + tested.stderr)[-6000:]


@pytest.mark.parametrize("prometheus", [2, 3])
@pytest.mark.parametrize("variant", ["cumulative", "window"])
def test_promtool_checks_and_evaluates_the_rules_like_modeltap(
    tmp_path: Path, variant: str, prometheus: int
) -> None:
    """Prometheus 3 stores the integer bounds of k as `25.0` where the constants say `25`: the
    numbers must come out the same as with Prometheus 2's spelling."""
    promtool = require_promtool()
    [k] = [f for f in PROFILE.features if f.name == "k"]
    integer_bounds = [e for e in k.psi_edges if format_le(e) != _stored_le(e, 3)]
    assert len(integer_bounds) >= 5, "k must have integer PSI bounds, or Prometheus 3 changes nothing"
    extra = ["--cumulative"] if variant == "cumulative" else []
    _generate(tmp_path, "--window", "1m", "--for", "1m", *extra)
    checked = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")],
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr

    tests: list[dict[str, Any]] = []
    levels = {}
    for feature in PROFILE.features:
        expected_psi, expected_js, level = _expected(feature)
        levels[feature.name] = level
        key = (f'{names.MODEL}="m", {names.VERSION}="1", {names.REFERENCE}="{PROFILE.id}", '
               f'{names.ROLE}="{feature.role}", {names.FEATURE}="{feature.name}"')  # fmt: skip
        for record, value in ((r.PSI, expected_psi), (r.JS, expected_js)):
            tests.append(
                {
                    "expr": f"abs({record}{{{key}}} - {value!r}) < bool 1e-9",
                    "eval_time": "5m",
                    "exp_samples": [{"labels": "{" + key + "}", "value": 1}],
                }
            )
        tests.append(
            {
                "expr": f"{r.LEVEL}{{{key}}}",
                "eval_time": "5m",
                "exp_samples": [{"labels": f"{r.LEVEL}{{{key}}}", "value": level}],
            }
        )
    assert levels == {"x": 3, "y": 0, "c": 3, "k": 0}, levels  # the data shift what they are meant to
    requests = sum(ok + failed for ok, failed in REQUESTS.values())
    failed = sum(f for _, f in REQUESTS.values())
    model = f'{names.MODEL}="m", {names.VERSION}="1"'
    for expr, value in ((r.REQUEST_RATE, requests / 60), (r.ERROR_RATIO, failed / requests)):
        tests.append(
            {
                "expr": f"abs({expr}{{{model}}} - {value!r}) < bool 1e-9",
                "eval_time": "5m",
                "exp_samples": [{"labels": "{" + model + "}", "value": 1}],
            }
        )
    firing = sorted(name for name, level in levels.items() if level >= 2)
    tests.append(
        {
            "expr": "count by (modeltap_feature_name, severity) "
            '(ALERTS{alertname="ModelTapFeatureDrift", alertstate="firing"})',
            "eval_time": "5m",
            "exp_samples": [
                {"labels": f'{{modeltap_feature_name="{name}", severity="critical"}}', "value": 1}
                for name in firing
            ],
        }
    )
    _promtool_test(tmp_path, _series(variant == "cumulative", prometheus), tests)


def test_features_without_a_distribution_get_no_constants() -> None:
    legacy = ReferenceFeature(name="old", role="input", kind="numeric", min=0.0, max=1.0)
    profile = ReferenceProfile(id="sha256:" + "0" * 64, features=(legacy, *PROFILE.features))
    assert [c.name for c in feature_constants(profile, 1e-3)] == ["x", "y", "c", "k"]


def test_remote_write_spelling_of_bounds_reaches_every_rule(tmp_path: Path) -> None:
    large = build_profile({"amount": RNG.lognormal(14.0, 1.0, 2000)})  # bounds around 1e6
    reference = tmp_path / "large.json"
    write_profile(large, reference)
    texts = {}
    for spelling in ("scrape", "remote-write"):
        output = tmp_path / f"{spelling}.yml"
        argv = ["rules", "--reference", str(reference), "--le-format", spelling, "-o", str(output)]
        assert modeltap_main(argv) == 0
        texts[spelling] = output.read_text()
    edges = parse_reference(large).features[0].psi_edges
    big = [e for e in edges if e >= 1e6]
    assert big, "the data must have PSI bounds from 1e6 on"
    for edge in big:
        assert format_le(edge) in texts["scrape"]
        assert format_le(edge, plain=True) in texts["remote-write"]
        assert format_le(edge, plain=True) not in texts["scrape"]
        assert format_le(edge) not in texts["remote-write"]


def _counter(metric: str, labels: dict[str, str], per_minute: int) -> dict[str, str]:
    text = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{text}}}", "values": f"0+{per_minute / 4!r}x40"}


def test_other_http_services_and_decoding_skips_fire_nothing(tmp_path: Path) -> None:
    """Beside modeltap's own series, Prometheus has another OpenTelemetry-instrumented HTTP
    service (the same `http_server_request_duration_seconds`, no modeltap labels) that is slow
    and answers 1 in 6 requests 503, and a model whose bodies all exceed max_body_bytes
    (`body_over_cap`). modeltap's slow, failing model and its queue drops must alert as before;
    the other service and the decoding skips must not."""
    _generate(tmp_path, "--window", "1m", "--for", "1m")
    modeltap = {"job": "churn", "instance": "c1", names.MODEL: "m", names.VERSION: "1"}
    other = {"job": "checkout", "instance": "k1"}
    series = []
    # Per minute, answered 200 and 503: both services, all requests slower than 2.5 s.
    for labels, ok, failed in ((modeltap, 90, 10), (other, 100, 20)):
        for status, count in (("200", ok), ("503", failed)):
            with_status = {**labels, names.STATUS: status}
            series.append(_counter(names.DURATION_COUNT, with_status, count))
            for le, cumulative in (("0.5", 0), ("2.5", 0), ("+Inf", count)):
                series.append(_counter(names.DURATION_BUCKET, {**with_status, "le": le}, cumulative))
    vision = {"job": "vision", "instance": "v1", names.MODEL: "resnet", names.VERSION: "3"}
    series.append(_counter(names.DROPPED, {**vision, names.DROP_REASON: "body_over_cap"}, 60))
    series.append(_counter(names.DROPPED, {**modeltap, names.DROP_REASON: "queue_full"}, 6))

    model = f'{names.MODEL}="m", {names.VERSION}="1"'
    firing = [
        f'{{alertname="ModelTapLatencyHigh", alertstate="firing", {model}, severity="warning"}}',
        f'{{alertname="ModelTapErrorRateHigh", alertstate="firing", {model}, severity="critical"}}',
        '{alertname="ModelTapTelemetryDropping", alertstate="firing", job="churn", '
        f'{names.DROP_REASON}="queue_full", severity="warning"}}',
    ]
    tests = [
        {
            "expr": 'ALERTS{alertstate="firing"}',
            "eval_time": "5m",
            "exp_samples": [{"labels": "ALERTS" + labels, "value": 1} for labels in firing],
        },
        # The recorded request numbers are modeltap's model's only (no nameless group).
        *(
            {
                "expr": f"abs({record} - {value!r}) < bool 1e-9",
                "eval_time": "5m",
                "exp_samples": [{"labels": f"{{{model}}}", "value": 1}],
            }
            for record, value in ((r.REQUEST_RATE, 100 / 60), (r.ERROR_RATIO, 0.1))
        ),
    ]
    _promtool_test(tmp_path, series, tests)


def test_both_spellings_of_a_bound_are_summed_into_one_bucket(tmp_path: Path) -> None:
    """Right after an upgrade to Prometheus 3 a replica's bucket exists under both spellings
    (`le="25"` from before, `le="25.0"` since) until the old one goes stale: the bucket sum must
    keep recording, one series per bound, rather than fail on a duplicate label set."""
    _generate(tmp_path, "--cumulative")
    [k] = [f for f in PROFILE.features if f.name == "k"]
    bound = next(e for e in k.psi_edges if format_le(e) != _stored_le(e, 3))
    labels = {names.MODEL: "m", names.VERSION: "1", names.REFERENCE: PROFILE.id,
              names.ROLE: "input", names.FEATURE: "k", "instance": "r1"}  # fmt: skip
    text = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    series = [
        {"series": f'{names.FEATURE_BUCKET}{{{text}, le="{format_le(bound)}"}}', "values": "10x8"},
        {"series": f'{names.FEATURE_BUCKET}{{{text}, le="{_stored_le(bound, 3)}"}}', "values": "_x4 12x8"},
    ]
    key = {name: value for name, value in labels.items() if name != "instance"}
    selector = ", ".join(f'{name}="{value}"' for name, value in {**key, "le": format_le(bound)}.items())
    tests = [
        {
            "expr": f"{r.BUCKET_SUM}",
            "eval_time": "90s",  # both present: 10 (old spelling) + 12 (new spelling)
            "exp_samples": [{"labels": f"{r.BUCKET_SUM}{{{selector}}}", "value": 22}],
        }
    ]
    _promtool_test(tmp_path, series, tests)
