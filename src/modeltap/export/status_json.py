"""The `/status` document: the snapshot as JSON, with the process that answered."""

from __future__ import annotations

import math
from typing import Any

from modeltap._version import __version__
from modeltap.export.history_json import history_document
from modeltap.snapshot import (
    BusinessSummary,
    CounterPoint,
    FeatureView,
    OutcomeTally,
    PerformanceSummary,
    Snapshot,
)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _by_reason(points: tuple[CounterPoint, ...], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for point in points:
        reason = str(dict(point.attributes).get(key, "overflow"))
        out[reason] = out.get(reason, 0) + int(point.value)
    return out


LEVEL_NAMES = ("OK", "INFO", "WARNING", "CRITICAL", "EMERGENCY")
# Drop reasons that lose a whole exchange, and those that lose only its span.
EXCHANGE_DROPS = frozenset({"queue_full", "queue_bytes"})
SPAN_DROPS = frozenset({"span_queue_full", "span_export_failed", "rejected"})


def feature_document(f: FeatureView) -> dict[str, Any]:
    """One feature's row: cumulative summary, then window scores against the reference."""
    return {
        "name": f.name,
        "role": f.role,
        "kind": f.kind,
        "count": f.count,
        "missing": f.missing,
        "missing_rate": _finite(f.missing_rate),
        "mean": _finite(f.mean),
        "std": _finite(f.std),
        "min": _finite(f.min),
        "max": _finite(f.max),
        "top_categories": dict(f.top_categories),
        # Values outside the reference's vocabulary are private: counted, named only if exposed.
        "unlisted": {
            "values": f.unlisted_values,
            "distinct": f.unlisted_distinct,
            "distinct_capped": f.unlisted_distinct_capped,
            "top": dict(f.unlisted_top),
        }
        if f.kind == "categorical"
        else None,
        "monitored": f.monitored,
        "window_count": f.window_count,
        "window_missing_rate": _finite(f.window_missing_rate),
        "missing_rate_shift": _finite(f.missing_shift),
        "missing_rate_pvalue": _finite(f.missing_pvalue),
        "out_of_range_rate": _finite(f.out_of_range_rate),
        "psi": _finite(f.psi),
        "psi_noise_floor": _finite(f.psi_noise_floor),
        "js": _finite(f.js),
        "ks_statistic": _finite(f.ks_statistic),
        "ks_pvalue": _finite(f.ks_pvalue),
        "chi2_pvalue": _finite(f.chi2_pvalue),
        "level": LEVEL_NAMES[f.level] if f.monitored else None,
        "rolling_mean": _finite(f.rolling_mean),
    }


def status_document(snap: Snapshot, configured_model: str | None) -> dict[str, Any]:
    models = []
    total = errors = gone = 0
    latency_count = 0
    latency_sum = 0.0
    latency_max: float | None = None
    for view in snap.models:
        total += view.requests
        errors += view.errors
        gone += view.client_disconnected
        latency_count += view.latency_count
        latency_sum += view.latency_sum_s
        if view.latency_max_s is not None:
            latency_max = max(latency_max or 0.0, view.latency_max_s)
        models.append(
            {
                "name": view.name,
                "version": view.version,
                "requests": view.requests,
                "errors": view.errors,
                "client_disconnected": view.client_disconnected,
                "decoded_rows": view.decoded_rows,
                "level": LEVEL_NAMES[view.level],
                "latency_level": LEVEL_NAMES[view.latency_level],
                "error_rate_level": LEVEL_NAMES[view.error_rate_level],
                "latency_s": {
                    "p50": view.latency_p50_s,
                    "p95": view.latency_p95_s,
                    "p99": view.latency_p99_s,
                    "max": view.latency_window_max_s,
                },
                "requests_per_s": view.requests_per_s,
                "freshness": freshness_document(view.freshness),
                # The first exchanges of the serving processes, kept out of `latency_s`.
                "cold_start": {"requests": view.cold_requests, "latency_p50_s": view.cold_latency_p50_s},
                "features": [feature_document(f) for f in view.features],
            }
        )
    dropped = _by_reason(snap.dropped, "modeltap.drop.reason")
    mon = snap.monitoring
    names = sorted({view.name for view in snap.models} | ({configured_model} if configured_model else set()))
    # The top-level `features` are those of the busiest model version; `models` has all of them.
    primary = max(snap.models, key=lambda v: v.requests, default=None)
    return {
        "modeltap_version": __version__,
        "reference": {"id": snap.reference_id},
        "window_s": snap.window_s,
        # The highest of every model version's drift, realised-performance and business level.
        "level": LEVEL_NAMES[
            max(
                (
                    *(v.level for v in snap.models),
                    *(p.level for p in snap.performance),
                    *(b.level for b in snap.business),
                ),
                default=0,
            )
        ],
        "process": {"pid": snap.pid, "instance_id": snap.instance_id},
        "taken_unix_s": snap.taken_unix_ns / 1e9,
        "uptime_s": (snap.taken_unix_ns - snap.start_unix_ns) / 1e9,
        "model": {
            "name": names[0] if len(names) == 1 else names,
            "versions": sorted({view.version for view in snap.models}),
        },
        "requests": {
            "total": total,
            "errors": errors,
            "client_disconnected": gone,
            # Exchanges lost before the statistics saw them; dropped spans are listed apart.
            "dropped": sum(n for reason, n in dropped.items() if reason in EXCHANGE_DROPS),
        },
        "latency_s": {
            "p50": primary.latency_p50_s if primary else None,
            "p95": primary.latency_p95_s if primary else None,
            "p99": primary.latency_p99_s if primary else None,
            "max": latency_max,
            "count": latency_count,
            "mean": latency_sum / latency_count if latency_count else None,
        },
        "features": [feature_document(f) for f in primary.features] if primary else [],
        "history": history_document(primary),  # of the same version, for the page's plots
        "models": models,
        "violations": _by_reason(snap.violations, "modeltap.violation.reason"),
        "dropped": dropped,
        "proxy_errors": None
        if snap.proxy_errors is None
        else _by_reason(snap.proxy_errors, "modeltap.error.code"),
        "proxy_retries": snap.proxy_retries,
        # Realised performance from labels fed back (POST …/feedback), per model version.
        "performance": [performance_document(p) for p in snap.performance],
        "labels": dict(snap.labels),
        # Business outcomes (POST …/outcome) per model version, and what became of them.
        "business": [business_document(b) for b in snap.business],
        "outcomes": dict(snap.outcomes),
        # Pending and firing alerts; notifications sent, failed and dropped (with webhooks).
        "alerts": [
            {
                "model": a.model,
                "version": a.version,
                "subject": a.subject,
                "state": a.state,
                "severity": a.severity,
                "level": LEVEL_NAMES[a.level],
                "score": a.score,
                "threshold": a.threshold,
                "since_unix_s": a.since_unix_s,
            }
            for a in snap.alerts
        ],
        "notifications": dict(snap.notifications),
        # What each process costs: the serving processes and, in process mode, the monitor.
        "resources": [
            {
                "pid": r.pid,
                "role": r.role,
                "cpu_time_s": {"user": r.cpu_user_s, "system": r.cpu_system_s},
                "cpu_utilization": r.cpu_utilization,
                "memory_rss_bytes": r.memory_rss_bytes,
                "threads": r.threads,
                "open_fds": r.open_fds,
                "gc_collections": list(r.gc_collections),
                "gc_pause_s": r.gc_pause_s,
                # The serving event loop's lag over the last minute (null: no loop probed).
                "event_loop_lag_max_s": r.loop_lag_max_s,
                "event_loop_lag_p99_s": r.loop_lag_p99_s,
                # A serving process's capture: compiled or pure Python (null: the monitor).
                "capture": r.capture,
            }
            for r in snap.resources
        ],
        # The container's CPU throttling and memory against its limit (cgroup v2; null elsewhere).
        "container": None
        if snap.container is None
        else {
            "cpu_periods": snap.container.cpu_periods,
            "cpu_throttled_periods": snap.container.cpu_throttled_periods,
            "cpu_throttled_s": snap.container.cpu_throttled_s,
            "memory_bytes": snap.container.memory_bytes,
            "memory_limit_bytes": snap.container.memory_limit_bytes,
            "memory_limit_use": snap.container.memory_limit_use,
        },
        # Each GPU the analysis's process sees through NVML (empty without one or nvidia-ml-py).
        "gpus": [
            {
                "index": g.index,
                "hw_id": g.hw_id,
                "name": g.name,
                "memory_used_bytes": g.memory_used_bytes,
                "memory_total_bytes": g.memory_total_bytes,
                "memory_use": g.memory_use,
                "utilization": g.utilization,
                "level": LEVEL_NAMES[g.level],
            }
            for g in snap.gpus
        ],
        # Each serving process: when it started and how long until it answered first.
        "cold_starts": [
            {"pid": pid, "process_start_unix_s": start, "first_answer_after_s": first - start}
            for pid, start, first in snap.cold_starts
        ],
        # The sidecar's rollback switch (null without --fallback-upstream).
        "rollback": rollback_document(snap),
        # The versions the answers carry, and the one expected (null without expected_model_version).
        "versions_seen": [
            {"model": name, "version": version, "first_seen_unix_s": first, "last_seen_unix_s": last}
            for name, version, first, last in snap.versions_seen
        ],
        "version_mismatch": None
        if snap.version_mismatch is None
        else {
            "model": snap.version_mismatch.model,
            "expected": snap.version_mismatch.expected,
            "served": list(snap.version_mismatch.served),
            "level": LEVEL_NAMES[snap.version_mismatch.level],
        },
        "monitoring": {
            "queue_depth": mon.queue_depth,
            "queue_bytes": mon.queue_bytes,
            "worker_lag_s": mon.worker_lag_s,
            "sampling_stride": mon.sampling_stride,
            "payload_sampling_stride": mon.payload_sampling_stride,
            "records_processed": mon.records_processed,
            "spans_exported": mon.spans_exported,
            "spans_dropped": sum(n for reason, n in dropped.items() if reason in SPAN_DROPS),
            # Where the analysis runs, which serving processes feed it, and what it asked of them.
            "mode": mon.mode,
            "feeders": list(mon.feeders),
            "control": dict(mon.control),
            "identities_over_cap": mon.identities_over_cap,
            "identities_expired": mon.identities_expired,
            "internal_errors": dict(mon.internal_errors),
            "export_failures": dict(mon.export_failures),
            "last_export_unix_s": dict(mon.last_export_unix_s),
            # WARNING's response in effect: monitoring raised until `until_unix_s`, and why.
            "boost": {"until_unix_s": snap.boost[0], "reason": snap.boost[1]} if snap.boost else None,
        },
    }


def freshness_document(
    freshness: tuple[int, float | None, float | None, float | None, int, int] | None,
) -> dict[str, Any] | None:
    """The ages of the `freshness_key` event times over the window (null without that column)."""
    if freshness is None:
        return None
    rows, p50, p95, oldest, future, level = freshness
    return {
        "rows": rows,
        "age_p50_s": p50,
        "age_p95_s": p95,
        "age_max_s": oldest,
        "future_rows": future,
        "level": LEVEL_NAMES[level],
    }


def rollback_document(snap: Snapshot) -> dict[str, Any] | None:
    view = snap.rollback
    if view is None:
        return None
    return {
        "fallback_upstream": view.fallback_upstream,
        "auto": view.auto,
        "active": view.active,
        "processes": view.processes,
        "on_fallback": view.on_fallback,
        "cause": view.cause or None,
        "by": view.by or None,
        "since_unix_s": view.since_unix_s,
        "requested": view.requested,
    }


def performance_document(summary: PerformanceSummary) -> dict[str, Any]:
    return {
        "model": summary.model,
        "version": summary.version,
        "kind": summary.kind,
        "window": {"labels": summary.window_labels, **dict(summary.window)},
        "total": {"labels": summary.total_labels, **dict(summary.total)},
        "per_class": {name: dict(numbers) for name, numbers in summary.per_class},
        "label_delay_p50_s": summary.label_delay_p50_s,
        "estimated": dict(summary.estimated),
        "segments": {name: dict(numbers) for name, numbers in summary.segments},
        "level": LEVEL_NAMES[summary.level],
        "baseline": {
            "source": summary.baseline_source,
            "accuracy": summary.baseline_accuracy,
            "labels": summary.baseline_labels,
        },
    }


def _tally(tally: OutcomeTally, numbers: tuple[tuple[str, float | None], ...]) -> dict[str, Any]:
    return {
        "requests": tally.requests,
        "exposures": tally.exposures,
        "outcomes": tally.outcomes,
        **{name: _finite(value) for name, value in numbers},
        "sums": {name: {"count": n, "sum": total} for name, n, total, _ in tally.sums},
    }


def business_document(summary: BusinessSummary) -> dict[str, Any]:
    impact = summary.revenue_impact
    return {
        "model": summary.model,
        "version": summary.version,
        "window": _tally(summary.window, summary.window_figures),
        "total": _tally(summary.total, summary.total_figures),
        "baseline": {
            "source": summary.baseline_source,
            "version": summary.baseline_version,
            **{name: _finite(value) for name, value in summary.baseline_figures},
        },
        "revenue_impact": None
        if impact is None
        else {
            "value": impact.value,
            "ci_low": impact.ci_low,
            "ci_high": impact.ci_high,
            "traffic": impact.traffic,
            "delta_conversion": impact.delta_conversion,
            "average_order_value": impact.average_order_value,
        },
        "metric": summary.metric,
        "threshold": summary.threshold,
        "p_value": summary.p_value,
        "level": LEVEL_NAMES[summary.level],
    }


def feature_histogram(snap: Snapshot, name: str) -> dict[str, Any] | None:
    """Reference and window counts of one feature of the busiest model version, for the page:
    numeric features over their fine buckets (`edges`), categorical ones over `categories`."""
    primary = max(snap.models, key=lambda v: v.requests, default=None)
    if primary is None:
        return None
    for feature in primary.features:
        if feature.name == name and feature.monitored and feature.reference_counts:
            return {
                "name": feature.name,
                "role": feature.role,
                "edges": list(feature.bounds),
                "categories": list(feature.categories),
                "reference": list(feature.reference_counts),
                "window": list(feature.window_counts),
            }
    return None
