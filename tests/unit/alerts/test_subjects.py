"""Every subject names one thing: a feature called like one of modeltap's own subjects
(`latency`, `version`, `business:x`) has an alert of its own, labelled and linked as a feature,
with the role and name `modeltap rules` gives it; built-in subjects and plain input names are
written as before."""

from __future__ import annotations

import pytest

from modeltap.alerts.alertmanager import alert_labels
from modeltap.alerts.observations import observations
from modeltap.alerts.runbooks import Runbooks
from modeltap.alerts.state import AlertBook
from modeltap.fleet import names
from modeltap.snapshot import (
    BusinessSummary,
    FeatureView,
    GpuDevice,
    ModelView,
    OutcomeTally,
    PerformanceSummary,
    Snapshot,
    VersionMismatch,
)
from modeltap.stats.scores import Level

DOCS = "https://docs.example.com/runbooks.md"


def _feature(name: str, role: str, level: Level) -> FeatureView:
    return FeatureView(
        name=name, role=role, kind="numeric", count=500, missing=0, mean=None, std=None, min=None,
        max=None, psi=0.9 if level >= Level.WARNING else 0.01, level=int(level), monitored=True,
    )  # fmt: skip


def _snapshot(features: tuple[FeatureView, ...]) -> Snapshot:
    """One model version whose own subjects are all observed, and OK: latency, error rate,
    freshness, performance, version, a business figure and a GPU."""
    model = ModelView("churn", "1", 1000, 0, 500, features, 0, 0.0, None, freshness=(10, 1.0, 2.0, 3.0, 0, 0))
    return Snapshot(
        taken_unix_ns=0, start_unix_ns=0, instance_id="x", pid=1, models=(model,),
        version_mismatch=VersionMismatch("churn", "1", ("1",), int(Level.OK)),
        performance=(PerformanceSummary("churn", "1", "classification", 200, 200, baseline_accuracy=0.9),),
        business=(BusinessSummary("churn", "1", OutcomeTally(), OutcomeTally(), metric="x"),),
        gpus=(GpuDevice(0, "0", "gpu", 1, 10, None),),
    )  # fmt: skip


# Names each of modeltap's own subjects, or a kind, or holds a colon.
TAKEN = ("latency", "error_rate", "freshness", "performance", "version", "business:x", "gpu_memory:0",
         "rollback", "telemetry", "feature", "geo:country", "output:x")  # fmt: skip


@pytest.mark.parametrize("name", TAKEN)
def test_an_input_named_like_a_subject_of_modeltap_alerts_on_its_own(name: str) -> None:
    snapshot = _snapshot((_feature(name, "input", Level.CRITICAL), _feature("load", "input", Level.OK)))
    book = AlertBook(for_s=0.0, group_wait_s=0.0)

    [notification] = book.evaluate(observations(snapshot, 0.1, 0.2, "churn"), 0.0)

    [alert] = notification.alerts
    assert (notification.kind, notification.severity, alert.score) == ("firing", "critical", 0.9)
    assert alert_labels(alert.key, alert.severity, "sha256:ab") == {
        "alertname": "ModelTapFeatureDrift",
        "severity": "critical",
        names.MODEL: "churn",
        names.VERSION: "1",
        names.ROLE: "input",
        names.FEATURE: name,
        names.REFERENCE: "sha256:ab",
    }
    assert Runbooks(base=DOCS).url(alert.key.subject) == f"{DOCS}#modeltapfeaturedrift"


@pytest.mark.parametrize("role", ["input", "output", "label"])
@pytest.mark.parametrize("name", [*TAKEN, "monthly_charges", "a:b:c", ""])
def test_a_features_labels_carry_its_role_and_its_whole_name(role: str, name: str) -> None:
    observed = observations(_snapshot((_feature(name, role, Level.WARNING),)), 0.1, 0.2, "churn")
    [feature] = [o for o in observed if o.score == 0.9]

    labels = alert_labels(feature.key, "warning", None)

    assert (labels["alertname"], labels[names.ROLE], labels[names.FEATURE]) == (
        "ModelTapFeatureDrift",
        role,
        name,
    )
    # No other observation of the snapshot has the feature's key (one would overwrite it).
    assert [o.key for o in observed].count(feature.key) == 1


def test_modeltaps_own_subjects_and_plain_inputs_are_written_and_labelled_as_before() -> None:
    features = (
        _feature("monthly_charges", "input", Level.OK),
        _feature("prediction", "output", Level.OK),
        _feature("churned", "label", Level.OK),
    )
    observed = observations(_snapshot(features), 0.1, 0.2, "churn")
    labels = {o.key.subject: alert_labels(o.key, "warning", None) for o in observed}

    assert sorted(labels) == sorted(
        ["monthly_charges", "output:prediction", "label:churned", "latency", "error_rate", "freshness",
         "version", "performance", "business:x", "gpu_memory:0"]
    )  # fmt: skip
    assert {s: ls["alertname"] for s, ls in labels.items() if ls["alertname"] != "ModelTapFeatureDrift"} == {
        "latency": "ModelTapLatencyHigh",
        "error_rate": "ModelTapErrorRateHigh",
        "freshness": "ModelTapDataStale",
        "version": "ModelTapVersionMismatch",
        "performance": "ModelTapPerformanceDrop",
        "business:x": "ModelTapBusinessDrop",
        "gpu_memory:0": "ModelTapGpuMemoryHigh",
    }
    assert labels["business:x"]["modeltap_business_metric"] == "x"
    assert labels["gpu_memory:0"]["hw_id"] == "0"
    assert (labels["monthly_charges"][names.ROLE], labels["monthly_charges"][names.FEATURE]) == (
        "input",
        "monthly_charges",
    )


def test_a_runbook_set_for_a_kind_is_not_taken_by_a_feature_of_that_name() -> None:
    runbooks = Runbooks(
        {"latency": "https://wiki/latency", "input:version": "https://wiki/version-column"}, DOCS
    )
    observed = observations(_snapshot((_feature("latency", "input", Level.OK),
                                       _feature("version", "input", Level.OK))), 0.1, 0.2)  # fmt: skip
    urls = {o.key.subject: runbooks.url(o.key.subject) for o in observed}

    assert urls["latency"] == "https://wiki/latency"
    assert urls["input:latency"] == f"{DOCS}#modeltapfeaturedrift"
    assert urls["input:version"] == "https://wiki/version-column"
    assert urls["version"] == f"{DOCS}#modeltapversionmismatch"
