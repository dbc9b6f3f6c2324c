"""What the alert book evaluates: every subject's level in a snapshot."""

from __future__ import annotations

from modeltap.alerts.runbooks import feature_subject
from modeltap.alerts.state import AlertKey, Observation
from modeltap.snapshot import PerformanceSummary, Snapshot
from modeltap.stats.performance_level import PerformanceThresholds
from modeltap.stats.scores import Level

GPU_MEMORY = "gpu_memory"  # the subject's kind: `gpu_memory:<hw.id>`
PERFORMANCE_THRESHOLDS = PerformanceThresholds()  # the defaults, as `GroundTruth` has them


def observations(
    snap: Snapshot,
    psi_warning: float,
    psi_critical: float,
    default_model: str = "",
    performance_thresholds: PerformanceThresholds = PERFORMANCE_THRESHOLDS,
) -> list[Observation]:
    """Features and outputs (PSI), latency (p99), error rate, realised performance (accuracy,
    against `performance_thresholds`) and the business figure (EMERGENCY) per model version, a
    served version other than the expected one, and each GPU's memory use (`gpu_memory:<hw.id>`,
    filed under `default_model` with no version: the device serves whatever runs on it); INFO and
    OK levels are observations too (they resolve alerts). Subjects are written as
    `runbooks.parse_subject` reads them (a feature's by `feature_subject`)."""
    out: list[Observation] = []
    for model in snap.models:
        for feature in model.features:
            if not feature.monitored:
                continue
            subject = feature_subject(feature.role, feature.name)
            level = Level(min(feature.level, Level.EMERGENCY))
            threshold = psi_critical if level >= Level.CRITICAL else psi_warning
            if feature.psi_noise_floor is not None:
                # The limit PSI was compared with: a small window's noise can be above 0.1 or 0.2.
                threshold = max(threshold, feature.psi_noise_floor)
            out.append(
                Observation(AlertKey(model.name, model.version, subject), level, feature.psi, threshold)
            )
        out.append(
            Observation(
                AlertKey(model.name, model.version, "latency"),
                Level(model.latency_level),
                model.latency_p99_s,
            )
        )
        out.append(
            Observation(AlertKey(model.name, model.version, "error_rate"), Level(model.error_rate_level))
        )
        if model.freshness is not None:
            _rows, _p50, p95, _max, _future, stale = model.freshness
            out.append(Observation(AlertKey(model.name, model.version, "freshness"), Level(stale), p95))
    mismatch = snap.version_mismatch
    if mismatch is not None:
        version = next((v for v in mismatch.served if v != mismatch.expected), mismatch.expected)
        out.append(Observation(AlertKey(mismatch.model, version, "version"), Level(mismatch.level)))
    for gpu in snap.gpus:
        out.append(
            Observation(
                AlertKey(default_model, "", f"{GPU_MEMORY}:{gpu.hw_id}"),
                Level(gpu.level),
                gpu.memory_use,
            )
        )
    for performance in snap.performance:
        out.append(_performance(performance, performance_thresholds))
    for business in snap.business:
        figure = dict(business.window_figures).get(business.metric)
        out.append(
            Observation(
                AlertKey(business.model, business.version, f"business:{business.metric}"),
                Level(business.level),
                figure,
                business.threshold,
            )
        )
    return out


def _performance(summary: PerformanceSummary, thresholds: PerformanceThresholds) -> Observation:
    """The window's accuracy and the limit it was held against: the critical drop below the
    baseline for CRITICAL, else the warning drop (the one a WARNING crossed, and the first one
    a recovering alert is below)."""
    level = Level(summary.level)
    drop = thresholds.critical_drop if level >= Level.CRITICAL else thresholds.warning_drop
    baseline = summary.baseline_accuracy
    return Observation(
        AlertKey(summary.model, summary.version, "performance"),
        level,
        dict(summary.window).get("accuracy"),
        baseline - drop if baseline is not None else None,
    )
