"""Prometheus text exposition (format 0.0.4) of the same snapshot the OTLP export sends.

Names follow the OpenTelemetry-to-Prometheus rules: dots become underscores, the unit becomes a
suffix, counters end in `_total`. Each `le` label is formatted the same way on every scrape and in
every replica, because PromQL joins histogram buckets on that exact string.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Iterable

from modeltap.export.business_points import business_counters, business_gauges
from modeltap.export.drift_points import drift_points
from modeltap.snapshot import Attributes, AttributeValue, CounterPoint, HistogramPoint, Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in text)


def _escape(value: AttributeValue) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_le(bound: float, plain: bool = False) -> str:
    """The `le` label exactly as Go's Prometheus client writes it (`strconv.FormatFloat(b, 'g',
    -1, 64)`): the OpenTelemetry Collector's Prometheus exporter serves bounds that way, and
    Prometheus 2 matches `le` byte for byte, so the rules `modeltap rules` generates work on this
    endpoint and on the Collector's alike. Shortest round-trip digits, exponent form below 1e-4
    and from 1e6 on with at least two exponent digits (`1e-05`, `2.5e+06`), `+Inf`.

    `plain=True` never uses the exponent form (`FormatFloat(b, 'f', -1, 64)`: `0.00001`,
    `2500000`), as the Collector's Prometheus remote-write exporter writes bounds."""
    value = float(bound)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digits, exponent = decimal.Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    # The decimal point sits after `point` digits of `text` (Python's repr is shortest round-trip,
    # like Go's; only the layout differs).
    point = len(digits) + int(exponent)
    power = point - 1
    if not plain and (power < -4 or power >= 6):
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        body = f"{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    elif point <= 0:
        body = "0." + "0" * -point + text
    elif point >= len(text):
        body = text + "0" * (point - len(text))
    else:
        body = text[:point] + "." + text[point:]
    return ("-" if sign else "") + body


def _labels(attributes: Attributes, extra: Iterable[tuple[str, str]] = ()) -> str:
    pairs = [f'{_name(k)}="{_escape(v)}"' for k, v in attributes]
    pairs.extend(f'{k}="{v}"' for k, v in extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(value)


def _counter(lines: list[str], name: str, help_text: str, points: Iterable[CounterPoint]) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} counter")
    lines.extend(f"{name}{_labels(p.attributes)} {_number(p.value)}" for p in points)


def _gauge(lines: list[str], name: str, help_text: str, rows: Iterable[tuple[Attributes, float]]) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} gauge")
    lines.extend(f"{name}{_labels(a)} {_number(v)}" for a, v in rows)


def _histogram(lines: list[str], name: str, help_text: str, points: Iterable[HistogramPoint]) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} histogram")
    for point in points:
        cumulative = 0
        for bound, count in zip((*point.bounds, math.inf), point.counts, strict=True):
            cumulative += count
            lines.append(f"{name}_bucket{_labels(point.attributes, [('le', format_le(bound))])} {cumulative}")
        if point.sum is not None:
            lines.append(f"{name}_sum{_labels(point.attributes)} {_number(point.sum)}")
        lines.append(f"{name}_count{_labels(point.attributes)} {point.count}")


def _prometheus_name(otel_name: str, unit: str) -> str:
    base = _name(otel_name)
    return base + "_seconds" if unit == "s" else base


def render(snap: Snapshot) -> str:
    lines: list[str] = []
    _histogram(
        lines, "http_server_request_duration_seconds", "Duration of HTTP server requests.", snap.duration
    )
    drift = drift_points(snap)
    if drift.histograms:
        _histogram(
            lines,
            "modeltap_feature_values",
            "Distribution of each monitored numeric feature over its reference fine buckets.",
            drift.histograms,
        )
    if drift.categories:
        _counter(
            lines,
            "modeltap_feature_categories_total",
            "Values of each monitored categorical feature by reference category.",
            drift.categories,
        )
    if drift.confusion:
        _counter(
            lines,
            "modeltap_performance_confusion_total",
            "Joined labels by true and predicted class.",
            drift.confusion,
        )
    if drift.score_histograms:
        _histogram(
            lines,
            "modeltap_performance_scores",
            "Positive-class scores of joined labels, by whether the label is the positive class.",
            drift.score_histograms,
        )
    if drift.residuals:
        _histogram(
            lines,
            "modeltap_performance_residuals",
            "A regressor's residuals of joined labels.",
            drift.residuals,
        )
    if drift.regression:
        _gauge(
            lines,
            "modeltap_performance_regression",
            "A regressor's joined labels and sums (cumulative; the label sum can go down).",
            [(p.attributes, p.value) for p in drift.regression],
        )
    if drift.labels:
        _counter(lines, "modeltap_labels_total", "Labels fed back, by outcome.", drift.labels)
    if drift.missing:
        _counter(
            lines, "modeltap_feature_missing_total", "Missing or non-finite feature values.", drift.missing
        )
    for otel_name, help_text, unit, rows in drift.gauges():
        _gauge(lines, _prometheus_name(otel_name, unit), help_text, rows)
    for series in business_counters(snap):
        if series.monotonic:
            _counter(lines, _name(series.name) + "_total", series.description, series.points)
        else:  # a sum that can go down is a gauge to Prometheus
            _gauge(
                lines,
                _name(series.name),
                series.description,
                [(p.attributes, p.value) for p in series.points],
            )
    for otel_name, help_text, unit, rows in business_gauges(snap):
        _gauge(lines, _prometheus_name(otel_name, unit), help_text, rows)
    _counter(lines, "modeltap_capture_dropped_total", "Items modeltap dropped, by reason.", snap.dropped)
    _counter(
        lines,
        "modeltap_data_quality_violations_total",
        "Data-quality violations, by reason.",
        snap.violations,
    )
    if snap.proxy_errors is not None:
        _counter(
            lines,
            "modeltap_proxy_errors_total",
            "Requests the sidecar answered or aborted itself, by error code.",
            snap.proxy_errors,
        )
    if snap.proxy_retries is not None:
        _counter(
            lines,
            "modeltap_proxy_retries_total",
            "Requests the sidecar replayed on a new connection.",
            (CounterPoint((), float(snap.proxy_retries)),),
        )
    mon = snap.monitoring
    _gauge(
        lines, "modeltap_queue_depth", "Exchanges captured but not yet processed.", [((), mon.queue_depth)]
    )
    _gauge(
        lines,
        "modeltap_worker_lag_seconds",
        "Age of the oldest unprocessed exchange.",
        [((), mon.worker_lag_s)],
    )
    _gauge(
        lines,
        "modeltap_capture_sampling_stride",
        "1 in N exchanges is captured while the worker is behind.",
        [((), mon.sampling_stride)],
    )
    _gauge(
        lines,
        "modeltap_capture_payload_sampling_stride",
        "Payloads are decoded for 1 in N captured exchanges while the worker is over its CPU budget.",
        [((), mon.payload_sampling_stride)],
    )
    _counter(
        lines,
        "modeltap_export_failures_total",
        "Failed OTLP export calls, by signal.",
        [CounterPoint((("modeltap.signal", s),), float(n)) for s, n in mon.export_failures],
    )
    _gauge(
        lines,
        "modeltap_export_last_success_seconds",
        "Unix time of the last successful OTLP export, by signal.",
        [((("modeltap.signal", s),), t) for s, t in mon.last_export_unix_s],
    )
    return "\n".join(lines) + "\n"
