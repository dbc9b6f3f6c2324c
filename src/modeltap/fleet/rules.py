"""Prometheus recording and alerting rules that judge all replicas of a model as one.

`modeltap rules --reference ref.json -o rules.yml` writes three groups:

- `modeltap-reference`: the reference as constant series (`modeltap:reference_bin:ratio`, one
  per PSI bucket or category, with `le`/`prev_le` or the category; the noise-floor factor and
  the reference size per feature). Generated from the profile, so no replica has to export it,
  and they carry the reference id, so rules of several references can share one Prometheus.
- `modeltap-fleet`: per model name, version and feature, summed over every replica: the bucket
  counts of the window (or since each replica started, with `cumulative`), their shares, PSI and
  Jensen-Shannon over the buckets modeltap scores locally, the noise floor and the level; latency
  percentiles from the duration histogram, the error ratio, drop and violation rates. The
  duration histogram has the OpenTelemetry name other HTTP servers export too: only series with
  a modeltap model name count.
- `modeltap-alerts`: `ModelTapFeatureDrift` (warning, critical), `ModelTapLatencyHigh`,
  `ModelTapErrorRateHigh`, `ModelTapTelemetryDropping` (not for `body_over_cap`, a deliberate
  decoding skip), each with a runbook link.

The formulas are STATS.md's (the functions in `modeltap.stats.scores`), written in PromQL:
PSI = sum((a - e) ln(a / e)) with empty shares floored to 1e-4 on both sides; JS distance base 2;
level 3 if PSI > max(0.2, tau), 2 if PSI > max(0.1, tau), else 0, and 0 below `min_samples`
window values, with tau = chi2.ppf(1 - alpha, B - 1) * (1/M + 1/N). INFO needs the tests'
p-values, which do not sum across replicas: it stays in each replica's local level.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modeltap.fleet import names as n
from modeltap.fleet.reference_series import FeatureConstants, feature_constants
from modeltap.fleet.yaml_text import dump
from modeltap.reference.document import ReferenceProfile
from modeltap.stats.scores import PSI_FLOOR, Thresholds

RUNBOOK = "https://github.com/modeltap/modeltap/blob/main/docs/runbooks.md"
LN2 = "0.6931471805599453"
LE_FORMATS = ("scrape", "remote-write")
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
# Prometheus 3 stores the `le` of a scraped classic histogram in float form: Go's shortest
# spelling plus ".0" where that has neither "." nor "e" (`2` -> `2.0`, `0` -> `0.0`); the
# constants keep Go's spelling, which Prometheus 2 and remote write store. The rules accept both.
LE_AS_CONSTANT = r"(.+?)(?:\.0)?"  # captures `le` without that suffix
LE_SCRATCH = "modeltap_le"
# `modeltap.capture.dropped` reasons that are not telemetry loss: exchanges served and timed
# but deliberately not decoded (bodies over max_body_bytes), so no TelemetryDropping alert.
DECODING_SKIPS = ("body_over_cap",)

# Recorded series (also what the dashboard queries).
PSI = "modeltap:feature_drift_psi"
JS = "modeltap:feature_drift_js"
LEVEL = "modeltap:feature_drift_level"
NOISE_FLOOR = "modeltap:feature_drift_noise_floor"
WINDOW_VALUES = "modeltap:feature_window_values"
BIN_COUNT = "modeltap:feature_bin:count"
BIN_TOTAL = "modeltap:feature_bin:total"
BIN_RATIO = "modeltap:feature_bin:ratio"
BIN_REFERENCE = "modeltap:feature_bin:reference_ratio"
BUCKET_SUM = "modeltap:feature_bucket:sum"
REF_RATIO = "modeltap:reference_bin:ratio"
REF_FACTOR = "modeltap:reference_noise_factor"
REF_SIZE = "modeltap:reference_size"
LATENCY = "modeltap:request_duration_seconds:p{}"
ERROR_RATIO = "modeltap:error_ratio"
REQUEST_RATE = "modeltap:request_rate"
DROP_RATE = "modeltap:dropped:rate"
VIOLATION_RATE = "modeltap:violations:rate"


def duration_text(seconds: float) -> str:
    """A PromQL duration for a number of seconds (`900` → `15m`, `30` → `30s`, `0.5` → `500ms`)."""
    if seconds <= 0:
        raise ValueError(f"a duration must be > 0 seconds, got {seconds!r}")
    millis = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


def check_duration(text: str) -> str:
    """`text` if it is a PromQL duration (`30s`, `15m`, `1h30m`), else ValueError."""
    if not _DURATION.match(text):
        raise ValueError(f"not a Prometheus duration: {text!r} (examples: 30s, 15m, 1h)")
    return text


@dataclass(frozen=True)
class RuleOptions:
    """What `modeltap rules` can be told; defaults are modeltap's local ones."""

    window: str = "15m"
    cumulative: bool = False  # drift since each replica started instead of over `window`
    model_name: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    drift_for: str = "10m"
    latency_for: str = "10m"
    errors_for: str = "5m"
    dropping_for: str = "10m"
    latency_p99_s: float = 1.0
    error_ratio: float = 0.05
    runbook: str = RUNBOOK
    # How `le` is spelled where Prometheus gets the series: "scrape" (the Collector's Prometheus
    # exporter, modeltap's /metrics) or "remote-write" (the Collector's remote-write exporter,
    # which never uses the exponent form). They differ only for bounds below 1e-4 or from 1e6.
    le_format: str = "scrape"

    def __post_init__(self) -> None:
        for name in ("window", "drift_for", "latency_for", "errors_for", "dropping_for"):
            check_duration(getattr(self, name))
        if not self.latency_p99_s > 0:
            raise ValueError(f"the latency threshold must be > 0 seconds, got {self.latency_p99_s!r}")
        if not 0 < self.error_ratio < 1:
            raise ValueError(f"the error-ratio threshold must lie in (0, 1), got {self.error_ratio!r}")
        if self.le_format not in LE_FORMATS:
            raise ValueError(f"le format must be one of {', '.join(LE_FORMATS)}, got {self.le_format!r}")

    @property
    def plain_le(self) -> bool:
        return self.le_format == "remote-write"


def _quote(value: str) -> str:
    """A PromQL string literal (Go syntax: backslash and double quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _selector(labels: Mapping[str, str], *matchers: tuple[str, str, str]) -> str:
    """`{a="x", b!="y"}` from equalities and (label, operator, value) matchers; "" when empty."""
    parts = [f"{k}={_quote(v)}" for k, v in labels.items()]
    parts += [f"{k}{op}{_quote(v)}" for k, op, v in matchers]
    return "{" + ", ".join(parts) + "}" if parts else ""


def _requests(options: RuleOptions, *matchers: tuple[str, str, str]) -> str:
    """The selector of modeltap's HTTP-duration series (and its other per-model series).

    `http_server_request_duration_seconds` is the OpenTelemetry semantic-convention name, which
    every instrumented HTTP server exports too (another service behind the same Collector, or
    FastAPI instrumentation in the same app); only modeltap's series carry a model name, always
    (`unknown` where none was vouched for). Without `--model-name` the selector still requires
    one, or those services would sum into a nameless model and fire its latency and error alerts.
    """
    if options.model_name:
        return _selector({n.MODEL: options.model_name}, *matchers)
    return _selector({}, (n.MODEL, "!=", ""), *matchers)


def _by(labels: Sequence[str]) -> str:
    return ", ".join(labels)


def _rule(record: str, expr: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"record": record, "expr": expr}
    if labels:
        rule["labels"] = dict(labels)
    return rule


def _number(value: float) -> str:
    return repr(float(value))


def reference_rules(profile: ReferenceProfile, constants: Sequence[FeatureConstants]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for feature in constants:
        key = {n.REFERENCE: profile.id, n.ROLE: feature.role, n.FEATURE: feature.name}
        rules.append(_rule(REF_FACTOR, f"vector({_number(feature.noise_factor)})", key))
        rules.append(_rule(REF_SIZE, f"vector({feature.size})", key))
        for b in feature.bins:
            labels = dict(key)
            if b.category:
                labels[n.CATEGORY] = b.category
            else:
                labels["le"] = b.le
                if b.prev_le:
                    labels["prev_le"] = b.prev_le
            rules.append(_rule(REF_RATIO, f"vector({_number(b.share)})", labels))
    return rules


def _source(metric: str, selector: str, options: RuleOptions) -> str:
    """The counts of the window (or all of them, cumulative) of each replica's series.

    `increase()` alone loses a series' first sample: a replica (or a new model version) that
    appears within the window starts with its first export's counts, and `increase()` counts only
    what came after. Series absent one window ago are taken whole instead (everything they
    counted falls within the window); older ones by `increase()`, which extrapolates to the
    window's edges as Prometheus does."""
    series = f"{metric}{selector}"
    if options.cumulative:
        return series
    return f"(increase({series}[{options.window}]) and {series} offset {options.window}) or {series}"


def _rate(metric: str, selector: str, options: RuleOptions) -> str:
    """Per-second rate over the window, with series younger than the window taken whole (as in
    `_source`) and spread over it: `rate()` needs two samples and misses the first export."""
    series = f"{metric}{selector}"
    seconds = _number(_seconds(options.window))
    return f"(rate({series}[{options.window}]) and {series} offset {options.window}) or {series} / {seconds}"


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(float(value) * units[unit] for value, unit in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration))


def _regex_literal(text: str) -> str:
    """`text` as an RE2 pattern matching only itself."""
    return "".join("\\" + c if c in ".+*?()[]{}|^$\\" else c for c in text)


def _psi_bounds(constants: Sequence[FeatureConstants]) -> tuple[str, ...]:
    return tuple(sorted({b.le for c in constants for b in c.bins if b.le}))


def _stored_spellings(le: str) -> tuple[str, ...]:
    """`le` as Prometheus may store it: as spelled, and for an integer bound also in Prometheus 3's
    float form (`25` and `25.0`). Go's shortest spelling never ends in ".0", so no other bound
    has the second spelling."""
    if le[-1].isdigit() and not any(c in le for c in ".eE"):
        return le, le + ".0"
    return (le,)


def fleet_rules(
    profile: ReferenceProfile, options: RuleOptions, constants: Sequence[FeatureConstants]
) -> list[dict[str, Any]]:
    model = {n.MODEL: options.model_name} if options.model_name else {}
    drift_selector = _selector({n.REFERENCE: profile.id, **model})
    # Only the PSI buckets' bounds are summed (about 12 of a numeric feature's ~100 fine
    # buckets): an index-level pre-filter, exact filtering happens in the join with the reference.
    # Prometheus 3 stores a scraped integer bound in float form (`le="2"` arrives as `le="2.0"`),
    # so both spellings pass. A plain alternation of literals: Prometheus matches it as a set.
    bounds = "|".join(_regex_literal(s) for le in _psi_bounds(constants) for s in _stored_spellings(le))
    bucket_selector = _selector({n.REFERENCE: profile.id, **model}, ("le", "=~", bounds))
    ref_prev = _selector({n.REFERENCE: profile.id}, ("prev_le", "!=", ""))
    ref_lowest = _selector({n.REFERENCE: profile.id, "prev_le": ""}, ("le", "!=", ""))
    series = _by(n.SERIES_KEY)
    feature_key = _by(n.FEATURE_KEY)
    own = _selector({n.REFERENCE: profile.id})
    t = options.thresholds
    floor = _number(PSI_FLOOR)
    requests = _requests(options)
    rules = [
        # Cumulative buckets at the PSI bounds, summed over replicas (job and instance dropped),
        # with `le` spelled as the constants spell it: a Prometheus 3 scrape's "2.0" becomes "2".
        # The spelling goes through a scratch label: rewriting `le` in place fails the whole rule
        # ("vector cannot contain metrics with the same labelset") while one series exists under
        # both spellings, as for a window after an upgrade from Prometheus 2; this way the rule
        # keeps recording, with both series' counts summed into the one bucket.
        _rule(
            BUCKET_SUM,
            f"""sum by ({series}, le) (
  label_replace(
    sum by ({series}, {LE_SCRATCH}) (
      label_replace(
        {_source(n.FEATURE_BUCKET, bucket_selector, options)},
        {_quote(LE_SCRATCH)}, "$1", "le", {_quote(LE_AS_CONSTANT)}
      )
    ),
    "le", "$1", {_quote(LE_SCRATCH)}, "(.*)"
  )
)""",
        ),
        # Count of each PSI bucket: C(le) - C(prev_le), the lowest bucket is C(le) itself; and
        # the count of each category (one rule: promtool rejects a record name used twice).
        _rule(
            BIN_COUNT,
            f"""(
    {BUCKET_SUM}{own}
    - on ({series}, le)
      (
        label_replace({BUCKET_SUM}{own}, "prev_le", "$1", "le", "(.*)")
        + on ({feature_key}, prev_le) group_left (le)
        (0 * {REF_RATIO}{ref_prev})
      )
  or
    {BUCKET_SUM}{own} and on ({feature_key}, le) {REF_RATIO}{ref_lowest}
)
or
  sum by ({series}, {n.CATEGORY}) ({_source(n.FEATURE_CATEGORIES, drift_selector, options)})""",
        ),
        _rule(BIN_TOTAL, f"sum by ({series}) ({BIN_COUNT}{own})"),
        _rule(
            BIN_RATIO,
            f"{BIN_COUNT}{own} / on ({series}) group_left () ({BIN_TOTAL}{own} > 0)",
        ),
        _rule(
            BIN_REFERENCE,
            f"0 * {BIN_RATIO}{own} + on ({feature_key}, le, {n.CATEGORY}) group_left () {REF_RATIO}{own}",
        ),
        # PSI with empty shares floored on both sides, never renormalised (scores.psi).
        _rule(
            PSI,
            f"""sum by ({series}) (
  (
    (({BIN_RATIO}{own} > 0) or ({BIN_RATIO}{own} == 0) + {floor})
    - (({BIN_REFERENCE}{own} > 0) or ({BIN_REFERENCE}{own} == 0) + {floor})
  )
  * ln(
    (({BIN_RATIO}{own} > 0) or ({BIN_RATIO}{own} == 0) + {floor})
    / (({BIN_REFERENCE}{own} > 0) or ({BIN_REFERENCE}{own} == 0) + {floor})
  )
)""",
        ),
        # Jensen-Shannon distance, base 2; 0 ln 0 terms are left out (scores.js_distance).
        _rule(
            JS,
            f"""sqrt(clamp_min(
  (
    sum by ({series}) (
      ({BIN_RATIO}{own} > 0)
      * ln(({BIN_RATIO}{own} > 0) / (({BIN_RATIO}{own} + {BIN_REFERENCE}{own}) / 2))
    )
    + sum by ({series}) (
      ({BIN_REFERENCE}{own} > 0)
      * ln(({BIN_REFERENCE}{own} > 0) / (({BIN_RATIO}{own} + {BIN_REFERENCE}{own}) / 2))
    )
  ) / (2 * {LN2}),
  0
))""",
        ),
        # Values the level's min_samples counts: all numeric ones, categorical ones not missing.
        _rule(
            WINDOW_VALUES,
            f"sum by ({series}) "
            f"({BIN_COUNT}{_selector({n.REFERENCE: profile.id}, (n.CATEGORY, '!=', '__missing__'))})",
        ),
        _rule(
            NOISE_FLOOR,
            f"""(
  1 / {BIN_TOTAL}{own}
  + on ({feature_key}) group_left () (1 / {REF_SIZE}{own})
)
* on ({feature_key}) group_left () {REF_FACTOR}{own}""",
        ),
        _rule(
            LEVEL,
            f"""(
  ({PSI}{own} > bool clamp_min({NOISE_FLOOR}{own}, {_number(t.psi_critical)}))
  + 2 * ({PSI}{own} > bool clamp_min({NOISE_FLOOR}{own}, {_number(t.psi_warning)}))
)
* ({WINDOW_VALUES}{own} >= bool {t.min_samples})""",
        ),
    ]
    by_model = _by(n.MODEL_KEY)
    for q in ("50", "95", "99"):
        rules.append(
            _rule(
                LATENCY.format(q),
                f"histogram_quantile(0.{q}, sum by ({by_model}, le) "
                f"({_rate(n.DURATION_BUCKET, requests, options)}))",
            )
        )
    rules += [
        _rule(REQUEST_RATE, f"sum by ({by_model}) ({_rate(n.DURATION_COUNT, requests, options)})"),
        _rule(
            ERROR_RATIO,
            f"""(
  sum by ({by_model}) ({_rate(n.DURATION_COUNT, _requests(options, (n.STATUS, "=~", "5..")), options)})
  or 0 * {REQUEST_RATE}{requests}
)
/ ({REQUEST_RATE}{requests} > 0)""",
        ),
        _rule(DROP_RATE, f"sum by (job, {n.DROP_REASON}) ({_rate(n.DROPPED, '', options)})"),
        _rule(
            VIOLATION_RATE,
            f"sum by ({by_model}, {n.VIOLATION_REASON}) ({_rate(n.VIOLATIONS, requests, options)})",
        ),
    ]
    return rules


def alert_rules(profile: ReferenceProfile, options: RuleOptions) -> list[dict[str, Any]]:
    own = _selector({n.REFERENCE: profile.id})
    requests = _requests(options)
    lost = _selector({}, (n.DROP_REASON, "!~", "|".join(map(_regex_literal, DECODING_SKIPS))))
    series = _by(n.SERIES_KEY)
    feature = f"{{{{ $labels.{n.FEATURE} }}}} ({{{{ $labels.{n.ROLE} }}}})"
    model = f"{{{{ $labels.{n.MODEL} }}}} version {{{{ $labels.{n.VERSION} }}}}"
    span = "since the replicas started" if options.cumulative else f"over the last {options.window}"

    def drift(severity: str, condition: str) -> dict[str, Any]:
        return {
            "alert": "ModelTapFeatureDrift",
            "expr": f"{PSI}{own} and on ({series}) ({LEVEL}{own} {condition})",
            "for": options.drift_for,
            "labels": {"severity": severity},
            "annotations": {
                "summary": f'{feature} of {model} drifted: PSI {{{{ $value | printf "%.3f" }}}}',
                "description": (
                    f"Across all replicas, the distribution of {feature} {span} differs from the "
                    f"reference (PSI above {'the critical' if severity == 'critical' else 'the warning'} "
                    "threshold and the noise floor)."
                ),
                "runbook_url": f"{options.runbook}#modeltapfeaturedrift",
            },
        }

    return [
        drift("critical", ">= 3"),
        drift("warning", "== 2"),
        {
            "alert": "ModelTapLatencyHigh",
            "expr": f"{LATENCY.format('99')}{requests} > {_number(options.latency_p99_s)}",
            "for": options.latency_for,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"p99 latency of {model} is {{{{ $value | humanizeDuration }}}}",
                "description": (
                    f"The 99th percentile of request durations over {options.window}, across all "
                    f"replicas, is above {options.latency_p99_s} s."
                ),
                "runbook_url": f"{options.runbook}#modeltaplatencyhigh",
            },
        },
        {
            "alert": "ModelTapErrorRateHigh",
            "expr": f"{ERROR_RATIO}{requests} > {_number(options.error_ratio)}",
            "for": options.errors_for,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": f"{{{{ $value | humanizePercentage }}}} of requests to {model} fail",
                "description": (
                    f"More than {options.error_ratio:.1%} of requests over {options.window} were "
                    "answered 5xx (model errors and the sidecar's own 502/503/504)."
                ),
                "runbook_url": f"{options.runbook}#modeltaperrorratehigh",
            },
        },
        {
            "alert": "ModelTapTelemetryDropping",
            # Reasons that are decoding skips, not telemetry loss, stay on the dashboard only: a
            # model whose bodies exceed max_body_bytes would otherwise keep this alert firing.
            "expr": f"{DROP_RATE}{lost} > 0",
            "for": options.dropping_for,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": (
                    f"modeltap in {{{{ $labels.job }}}} drops telemetry ({{{{ $labels.{n.DROP_REASON} }}}}): "
                    "{{ $value | humanize }}/s"
                ),
                "description": (
                    "Exchanges or spans are being dropped, so drift and latency numbers are based on "
                    "a sample. The model's answers are not affected."
                ),
                "runbook_url": f"{options.runbook}#modeltaptelemetrydropping",
            },
        },
    ]


def rule_groups(
    profile: ReferenceProfile, options: RuleOptions, constants: Sequence[FeatureConstants] | None = None
) -> dict[str, Any]:
    """The rule file as a document (`{"groups": [...]}`); `constants` of the profile, computed
    when not given."""
    if constants is None:
        constants = feature_constants(profile, options.thresholds.alpha, options.plain_le)
    return {
        "groups": [
            {"name": "modeltap-reference", "rules": reference_rules(profile, constants)},
            {"name": "modeltap-fleet", "rules": fleet_rules(profile, options, constants)},
            {"name": "modeltap-alerts", "rules": alert_rules(profile, options)},
        ]
    }


def rules_text(profile: ReferenceProfile, options: RuleOptions, source: str = "") -> str:
    """The rule file as YAML, with a header saying what it was generated from."""
    constants = feature_constants(profile, options.thresholds.alpha, options.plain_le)
    scored = len(constants)
    variant = "since each replica started (cumulative)" if options.cumulative else f"over {options.window}"
    header = (
        "Prometheus rules generated by `modeltap rules`: fleet drift, latency, errors and alerts.\n"
        f"Reference {profile.id}{' (' + source + ')' if source else ''}: {scored} scored feature(s); "
        f"drift {variant}.\n"
        "Regenerate rather than edit: the constants follow the reference. docs/backends.md explains it."
    )
    return dump(rule_groups(profile, options, constants), header)
