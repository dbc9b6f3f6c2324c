"""One configuration object; keyword arguments and environment variables are views of it.

`ModelTapConfig.from_env()` reads `MODELTAP_*` variables for modeltap's own settings and the
standard `OTEL_*` variables for export, then applies explicit keyword overrides. Every value is
validated at construction; a bad value raises `ConfigError` naming the setting.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from modeltap.errors import ConfigError
from modeltap.redaction import may_hold_a_secret, redact_url, variable_shown, without_userinfo

__all__ = ["ExportConfig", "ModelTapConfig", "SamplerConfig"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# Semantic-convention buckets for http.server.request.duration (seconds).
DEFAULT_DURATION_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

MONITOR_MODES = ("process", "inline")
_MONITOR_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_OUTCOME_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
# The figures a business level can judge (modeltap.stats.business computes them), and the
# outcome whose 0/1 values make the conversion rate.
BUSINESS_METRICS = ("conversion_rate", "average_order_value", "revenue_per_prediction")
CONVERSION = "conversion"

# Names of the payload decoders (protocols/detect.py), for protocol_routes.
PROTOCOL_NAMES = ("kserve_v1", "tf_serving", "oip_v2", "seldon", "openai", "json", "mapping")

_SAMPLERS = {
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
}


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _parse_float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# What http.client refuses in a request line (its InvalidURL echoes the path): spaces and
# control characters.
_NOT_IN_A_REQUEST_LINE = re.compile(r"[\x00-\x20\x7f]")


def receiver_url_problem(url: str) -> str | None:
    """Why an alert receiver's URL could never be posted to, in words that never repeat its path
    or query (a webhook's credential); None when it can. Checked at start-up: otherwise the first
    notification finds out, long after the operator has gone."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "an unclosed IPv6 bracket"
    try:
        port = parts.port
    except ValueError:
        return "a port that is not a number within 1-65535"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"scheme {parts.scheme!r} and host {parts.hostname!r}, not an http(s) URL with a host"
    if port == 0:
        return "port 0"
    if _NOT_IN_A_REQUEST_LINE.search(url):
        return "a space or a control character (percent-encode it)"
    if not (parts.path + parts.query).isascii():
        return "characters outside ASCII in its path or query (percent-encode them)"
    if "@" in parts.netloc:
        return "user info (user:password@): it is never sent as credentials, and the host is not found"
    return None


def receiver_shown(url: str) -> str:
    """A receiver URL as an error names it: scheme, host and port only, where it has them."""
    try:
        if urlsplit(url).hostname:
            return redact_url(url)
    except ValueError:
        pass
    return "one"


def _parse_key_values(name: str, raw: str) -> dict[str, str]:
    """Parse the W3C-baggage-like `k1=v1,k2=v2` lists the OTEL_* variables use."""
    from urllib.parse import unquote

    result: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            # Exporter headers are usually credentials (API keys, tokens): never repeated.
            got = "one of them has no key or no '='" if may_hold_a_secret(name) else f"got {raw!r}"
            raise ConfigError(f"{name} must be a list of key=value pairs, {got}")
        result[unquote(key.strip())] = unquote(value.strip())
    return result


def _parse_json_object(name: str, raw: str) -> dict[str, str]:
    import json

    try:
        value = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a JSON object of strings, got {raw!r}") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"{name} must be a JSON object of strings, got {raw!r}")
    return value


@dataclass(frozen=True)
class SamplerConfig:
    """Trace sampling: the OTEL_TRACES_SAMPLER names; the default keeps 10 % of new traces."""

    name: str = "parentbased_traceidratio"
    ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in _SAMPLERS:
            raise ConfigError(f"OTEL_TRACES_SAMPLER must be one of {sorted(_SAMPLERS)}, got {self.name!r}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG must be within [0, 1], got {self.ratio!r}")


@dataclass(frozen=True)
class ExportConfig:
    """Where and how telemetry leaves the process (OTLP). No endpoint means no export attempts."""

    endpoint: str | None = None  # base URL (http/protobuf: /v1/<signal> is appended)
    metrics_endpoint: str | None = None  # full signal URL, overrides `endpoint` for metrics
    traces_endpoint: str | None = None
    protocol: str = "http/protobuf"  # or "grpc"
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    metric_export_interval_s: float = 60.0
    metrics_enabled: bool = True
    traces_enabled: bool = True
    service_name: str | None = None
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    span_queue_max: int = 2048
    span_batch_max: int = 512
    span_export_interval_s: float = 5.0
    shutdown_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.protocol not in ("http/protobuf", "grpc"):
            raise ConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or grpc, got {self.protocol!r}"
            )
        for name in ("endpoint", "metrics_endpoint", "traces_endpoint"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                parts = urlsplit(value)
                valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            except ValueError:  # an unclosed IPv6 bracket, a port that is not a number
                valid = False
            if not valid:
                raise ConfigError(
                    f"OTLP {name} must be an http(s) URL with a host, got {without_userinfo(value)!r}", name
                )
        for name in ("timeout_s", "metric_export_interval_s", "span_export_interval_s", "shutdown_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}", name)
        for name in ("span_queue_max", "span_batch_max"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}", name)

    @property
    def metrics_target(self) -> str | None:
        if not self.metrics_enabled:
            return None
        return self.metrics_endpoint or self._signal_url("metrics")

    @property
    def traces_target(self) -> str | None:
        if not self.traces_enabled:
            return None
        return self.traces_endpoint or self._signal_url("traces")

    def _signal_url(self, signal: str) -> str | None:
        if self.endpoint is None:
            return None
        if self.protocol == "grpc":
            return self.endpoint
        return self.endpoint.rstrip("/") + f"/v1/{signal}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ExportConfig:
        """Read the standard OTEL_* variables; errors name the variable and its value."""
        env = environ
        kwargs: dict[str, Any] = {}
        sources: dict[str, tuple[str, str]] = {}

        def take(var: str, field_name: str, convert: Any = None) -> None:
            raw = env.get(var, "").strip()
            if raw:  # empty means unset (OpenTelemetry configuration spec)
                kwargs[field_name] = convert(var, raw) if convert else raw
                sources[field_name] = (var, raw)

        take("OTEL_EXPORTER_OTLP_ENDPOINT", "endpoint")
        take("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "metrics_endpoint")
        take("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "traces_endpoint")
        take("OTEL_EXPORTER_OTLP_PROTOCOL", "protocol")
        take("OTEL_EXPORTER_OTLP_HEADERS", "headers", _parse_key_values)
        # Milliseconds, as the specification says (the Python SDK exporters read seconds; a
        # value written for them, such as 10, would mean 10 ms here: see the README).
        take("OTEL_EXPORTER_OTLP_TIMEOUT", "timeout_s", lambda v, r: _parse_float(v, r) / 1000)
        take(
            "OTEL_METRIC_EXPORT_INTERVAL", "metric_export_interval_s", lambda v, r: _parse_float(v, r) / 1000
        )
        take("OTEL_BSP_SCHEDULE_DELAY", "span_export_interval_s", lambda v, r: _parse_float(v, r) / 1000)
        take("OTEL_BSP_MAX_QUEUE_SIZE", "span_queue_max", _parse_int)
        take("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "span_batch_max", _parse_int)
        take("OTEL_SERVICE_NAME", "service_name")
        take("OTEL_RESOURCE_ATTRIBUTES", "resource_attributes", _parse_key_values)
        if env.get("OTEL_METRICS_EXPORTER", "").strip().lower() == "none":
            kwargs["metrics_enabled"] = False
        if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
            kwargs["traces_enabled"] = False
        sampler_name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or SamplerConfig.name
        ratio = SamplerConfig.ratio
        if raw := env.get("OTEL_TRACES_SAMPLER_ARG", "").strip():
            ratio = _parse_float("OTEL_TRACES_SAMPLER_ARG", raw)
        kwargs["sampler"] = SamplerConfig(sampler_name, ratio)
        config: ExportConfig = _construct(cls, kwargs, sources)
        return config


def _construct(cls: Any, kwargs: dict[str, Any], sources: dict[str, tuple[str, str]]) -> Any:
    """Build the config; a value that came from a variable is reported by that variable."""
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if exc.setting in sources:
            var, raw = sources[exc.setting]
            raise ConfigError(f"{variable_shown(var, raw)} is invalid: {exc}", exc.setting) from None
        raise


@dataclass(frozen=True)
class ModelTapConfig:
    """Everything modeltap can be told, with production defaults.

    Example::

        config = ModelTapConfig.from_env(model_name="churn", max_body_bytes=256 * 1024)
        app.add_middleware(ModelTapMiddleware, config=config)
    """

    enabled: bool = True
    model_name: str | None = None
    model_version: str | None = None
    reference: str | None = None  # path of a reference profile (JSON)
    # Decode cap: bytes per direction copied for feature decoding; never leaves the process.
    max_body_bytes: int = 1024 * 1024
    # Opt-in payloads on spans, truncated on a UTF-8 boundary at this many bytes per direction.
    capture_payloads: bool = False
    max_payload_attribute_bytes: int = 64 * 1024
    capture_request_headers: tuple[str, ...] = ()  # allow-list exported as span attributes
    capture_response_headers: tuple[str, ...] = ()
    # Pin a protocol for paths under a prefix ({"/v2/": "oip_v2"}); auto-detected elsewhere.
    protocol_routes: Mapping[str, str] = field(default_factory=dict)
    # Dotted paths with [*] for JSON no built-in decoder knows ({"features": "rows[*]", ...}).
    payload_mapping: Mapping[str, str] | None = None
    version_header: str = "x-model-version"
    request_id_header: str = "x-request-id"
    queue_max_records: int = 10_000
    queue_max_bytes: int = 64 * 1024 * 1024
    worker_interval_s: float = 0.005
    # Share of the queue at which the tap starts sampling exchanges instead of taking all.
    overload_watermark: float = 0.5
    # Share of one core the worker may use; above it, payloads are decoded for a weighted sample
    # of exchanges (timing and counts stay complete). None or 0 = no budget.
    worker_cpu_budget: float | None = 0.05
    # Drift window: `window_slots` tumbling slots of `window_slot_s` seconds (STATS.md: 15 x 60 s).
    window_slots: int = 15
    window_slot_s: float = 60.0
    # Bounds of the request-duration histogram (seconds). The defaults are the semantic
    # conventions'; their lowest bound is 5 ms, so percentiles a backend computes from them
    # cannot tell 1 ms from 4 ms: give finer bounds for fast models (docs/backends.md).
    duration_buckets: tuple[float, ...] = DEFAULT_DURATION_BUCKETS_S
    # Alert thresholds (STATS.md "Alert levels").
    psi_warning: float = 0.1
    psi_critical: float = 0.2
    drift_alpha: float = 1e-3
    min_samples: int = 500
    sigma_k: float = 3.0
    views_prefix: str | None = "/modeltap"  # None disables the local views
    views_token: str | None = None
    views_allow: tuple[str, ...] = ()  # CIDRs besides loopback allowed to read the views
    series_limit: int = 2000
    # Bounded state (a client cannot create state by inventing names): model names and versions
    # per name that may own statistics (beyond them: `unknown`), input features tracked per model
    # version when no reference lists them, and outputs tracked besides the reference's.
    max_models: int = 16
    max_versions_per_model: int = 8
    max_features: int = 256
    max_outputs: int = 16
    # Show categorical values that are not in the reference's vocabulary (a privacy risk: they
    # are raw payload values, e.g. e-mail addresses). Off: they are counted, never shown.
    expose_values: bool = False
    snapshot_interval_s: float = 0.5
    # Where the analysis runs: "process" (a monitor process beside the server, shared by all its
    # workers; the default) or "inline" (a thread in the serving process: tests, notebooks,
    # platforms that cannot start processes). Process mode falls back to inline, with a log line,
    # where a monitor cannot be started.
    monitor: str = "process"
    monitor_id: str | None = None  # names the server's monitor (default: the supervisor's pid)
    monitor_memory_bytes: int = 512 * 1024 * 1024  # above it the monitor sheds, never grows
    # Ground truth: labels fed back to `{views_prefix}/feedback` join predictions by request id
    # and row, or by this input column (a business key such as a transaction id). Predictions
    # wait for their labels `label_ttl_s` (a day: most labels that come at all come within it),
    # in a store of at most `label_store_bytes` (64 MiB, about 250 000 predictions).
    label_key: str | None = None
    # Performance per segment: a categorical input the reference profiles (its vocabulary are
    # the segments; other values count as __other__, absent ones as __missing__).
    segment_feature: str | None = None
    # The model ranks: each answered row is a ranked list of items and its label the relevant
    # item(s); performance is MRR and NDCG at this cut-off.
    ranking_k: int | None = None
    # Alerts: a level held `alert_for_s` fires; alerts of one version starting within
    # `alert_group_wait_s` go out together; a firing alert is repeated every `alert_repeat_s`
    # and resolves once below its level for `alert_resolve_s`. Notifications go to every
    # `alert_webhooks` URL (JSON; README "Alerts").
    alert_webhooks: tuple[str, ...] = ()
    alertmanagers: tuple[str, ...] = ()  # Alertmanager base URLs (POST /api/v2/alerts)
    alert_slack_webhooks: tuple[str, ...] = ()  # Slack-style incoming webhooks ({"text": …})
    alert_for_s: float = 30.0
    alert_group_wait_s: float = 10.0
    alert_repeat_s: float = 4 * 3600.0
    alert_resolve_s: float = 30.0
    # WARNING's response: for this long after a warning fires, monitor the model harder (payload
    # decoding at up to twice the CPU budget, trace sampling doubled, snapshots twice as often).
    alert_boost_s: float = 600.0
    # Where notifications send people: the status page as they reach it (the sidecar's admin
    # page by default), and runbooks: per subject or kind (`latency=https://…`), else the
    # section of `alert_runbook_url` (default: modeltap's docs/runbooks.md) for the alert's kind.
    alert_status_url: str | None = None
    # The version that should be serving: WARNING while the answers carry another one.
    expected_model_version: str | None = None
    # A serving process's first exchanges are its cold start: their latency is reported apart
    # and kept out of the steady-state percentiles and the latency baseline.
    cold_start_requests: int = 20
    # Data freshness: an input column holding each row's event time (epoch seconds or RFC 3339),
    # kept out of drift and schema checks; its age at the exchange is measured, and its p95 over
    # the window is WARNING above `freshness_max_age_s` (CRITICAL above twice that).
    freshness_key: str | None = None
    freshness_max_age_s: float | None = None
    alert_runbook_url: str | None = None
    alert_runbooks: Mapping[str, str] = field(default_factory=dict)
    # Business outcomes fed back to `{views_prefix}/outcome` (the sidecar's admin `/outcome`):
    # the names taken (`conversion` is 0/1 per answered row, `order_value` a number; any other
    # name is refused, never created; none, the default: off, and no answered row is kept), the
    # figure judged (conversion_rate, average_order_value, revenue_per_prediction), and
    # EMERGENCY: the window's figure below `business_floor` (else more than `business_max_drop`
    # below the baseline's) and significantly below it (one-sided p < `business_alpha`). The
    # baseline is `business_baseline_version`, else the model's first version, and for that
    # version its own history before the window.
    outcome_names: tuple[str, ...] = ()
    business_metric: str = "conversion_rate"
    business_floor: float | None = None
    business_max_drop: float = 0.10
    business_alpha: float = 0.01
    business_baseline_version: str | None = None
    label_ttl_s: float = 24 * 3600.0
    label_store_bytes: int = 64 * 1024 * 1024
    # A GPU's memory in use against its total (through NVML, `modeltap[gpu]`): WARNING above the
    # first share, CRITICAL above the second (a CUDA out-of-memory error is close there).
    gpu_memory_warning: float = 0.90
    gpu_memory_critical: float = 0.97
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_payload_attribute_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}", name)
        for name in (
            "queue_max_records",
            "queue_max_bytes",
            "series_limit",
            "max_models",
            "max_versions_per_model",
            "max_features",
            "max_outputs",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}", name)
        for name in ("worker_interval_s", "snapshot_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}", name)
        if self.window_slots < 1 or self.window_slots > 1440:
            raise ConfigError(
                f"window_slots must be within 1..1440, got {self.window_slots!r}", "window_slots"
            )
        buckets = self.duration_buckets
        if not (
            1 <= len(buckets) <= 64
            and all(isinstance(b, (int, float)) and 0 < b < math.inf for b in buckets)
            and all(a < b for a, b in itertools.pairwise(buckets))
        ):
            raise ConfigError(
                f"duration_buckets must be 1 to 64 increasing finite bounds > 0 (seconds), got {buckets!r}",
                "duration_buckets",
            )
        if self.window_slot_s <= 0:
            raise ConfigError(f"window_slot_s must be > 0, got {self.window_slot_s!r}", "window_slot_s")
        if not 0 <= self.psi_warning <= self.psi_critical:
            raise ConfigError(
                f"need 0 <= psi_warning <= psi_critical, got {self.psi_warning!r} and {self.psi_critical!r}",
                "psi_warning",
            )
        if not 0 < self.drift_alpha < 1:
            raise ConfigError(f"drift_alpha must be within (0, 1), got {self.drift_alpha!r}", "drift_alpha")
        if self.min_samples < 0:
            raise ConfigError(f"min_samples must be >= 0, got {self.min_samples!r}", "min_samples")
        if not self.sigma_k > 0:
            raise ConfigError(f"sigma_k must be > 0, got {self.sigma_k!r}", "sigma_k")
        if self.worker_cpu_budget is not None and not 0.0 <= self.worker_cpu_budget <= 1.0:
            raise ConfigError(
                f"worker_cpu_budget must be within [0, 1], got {self.worker_cpu_budget!r}",
                "worker_cpu_budget",
            )
        if not 0.0 < self.overload_watermark <= 1.0:
            raise ConfigError(
                f"overload_watermark must be within (0, 1], got {self.overload_watermark!r}",
                "overload_watermark",
            )
        if self.views_prefix is not None and (
            not self.views_prefix.startswith("/") or self.views_prefix.endswith("/")
        ):
            raise ConfigError(
                f"views_prefix must start with '/' and not end with '/', got {self.views_prefix!r}",
                "views_prefix",
            )
        for prefix, protocol in self.protocol_routes.items():
            if not prefix.startswith("/") or protocol not in PROTOCOL_NAMES:
                raise ConfigError(
                    f"protocol_routes entries are '/prefix': one of {list(PROTOCOL_NAMES)}, "
                    f"got {prefix!r}: {protocol!r}",
                    "protocol_routes",
                )
        for cidr in self.views_allow:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(
                    f"views_allow entries must be IP networks, got {cidr!r}", "views_allow"
                ) from None
        if self.monitor not in MONITOR_MODES:
            raise ConfigError(
                f"monitor must be one of {list(MONITOR_MODES)}, got {self.monitor!r}", "monitor"
            )
        if self.monitor_id is not None and not _MONITOR_ID.fullmatch(self.monitor_id):
            raise ConfigError(
                f"monitor_id must be 1-64 letters, digits, '.', '_' or '-', got {self.monitor_id!r}",
                "monitor_id",
            )
        if not 0 <= self.alert_boost_s <= 600:
            raise ConfigError(
                f"alert_boost_s must be within 0..600 s, got {self.alert_boost_s!r}", "alert_boost_s"
            )
        for name in ("alert_for_s", "alert_group_wait_s", "alert_resolve_s"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0 seconds, got {getattr(self, name)!r}", name)
        if self.freshness_max_age_s is not None and not self.freshness_max_age_s > 0:
            raise ConfigError(
                f"freshness_max_age_s must be > 0 seconds, got {self.freshness_max_age_s!r}",
                "freshness_max_age_s",
            )
        if not 0 <= self.cold_start_requests <= 10_000:
            raise ConfigError(
                f"cold_start_requests must be within 0..10000, got {self.cold_start_requests!r}",
                "cold_start_requests",
            )
        if not self.alert_repeat_s > 0:
            raise ConfigError(f"alert_repeat_s must be > 0, got {self.alert_repeat_s!r}", "alert_repeat_s")
        for name in ("alert_status_url", "alert_runbook_url"):
            value = getattr(self, name)
            if value is not None and not _http_url(value):
                raise ConfigError(f"{name} must be an http(s) URL, got {value!r}", name)
        for subject, url in self.alert_runbooks.items():
            if not _http_url(url):
                raise ConfigError(
                    f"alert_runbooks: {subject} must be an http(s) URL, got {url!r}", "alert_runbooks"
                )
        receivers = {
            "alert_webhooks": self.alert_webhooks,
            "alertmanagers": self.alertmanagers,
            "alert_slack_webhooks": self.alert_slack_webhooks,
        }
        for setting, urls in receivers.items():
            for url in urls:
                problem = receiver_url_problem(url)
                if problem is not None:
                    # Not the URL itself: a webhook's path or query is often its credential.
                    raise ConfigError(
                        f"{setting} must be http(s) URLs a notification can be posted to; "
                        f"{receiver_shown(url)} has {problem}",
                        setting,
                    )
        if self.ranking_k is not None and not 1 <= self.ranking_k <= 1000:
            raise ConfigError(f"ranking_k must be within 1..1000, got {self.ranking_k!r}", "ranking_k")
        if self.business_metric not in BUSINESS_METRICS:
            raise ConfigError(
                f"business_metric must be one of {list(BUSINESS_METRICS)}, got {self.business_metric!r}",
                "business_metric",
            )
        if not 0 < self.business_max_drop < 1:
            raise ConfigError(
                f"business_max_drop must be within (0, 1), got {self.business_max_drop!r}",
                "business_max_drop",
            )
        if not 0 < self.business_alpha < 1:
            raise ConfigError(
                f"business_alpha must be within (0, 1), got {self.business_alpha!r}", "business_alpha"
            )
        if self.business_floor is not None and not math.isfinite(self.business_floor):
            raise ConfigError(f"business_floor must be finite, got {self.business_floor!r}", "business_floor")
        if len(self.outcome_names) > 32 or not all(_OUTCOME_NAME.fullmatch(n) for n in self.outcome_names):
            raise ConfigError(
                "outcome_names must be at most 32 names of 1-64 letters, digits or '_', "
                f"got {self.outcome_names!r}",
                "outcome_names",
            )
        if not self.label_ttl_s > 0:
            raise ConfigError(f"label_ttl_s must be > 0, got {self.label_ttl_s!r}", "label_ttl_s")
        if self.label_store_bytes < 1024 * 1024:
            raise ConfigError(
                f"label_store_bytes must be >= 1 MiB, got {self.label_store_bytes!r}", "label_store_bytes"
            )
        if self.monitor_memory_bytes < 64 * 1024 * 1024:
            raise ConfigError(
                f"monitor_memory_bytes must be >= 64 MiB, got {self.monitor_memory_bytes!r}",
                "monitor_memory_bytes",
            )
        if not 0 < self.gpu_memory_warning <= self.gpu_memory_critical <= 1:
            raise ConfigError(
                "need 0 < gpu_memory_warning <= gpu_memory_critical <= 1, got "
                f"{self.gpu_memory_warning!r} and {self.gpu_memory_critical!r}",
                "gpu_memory_warning",
            )
        for name in ("version_header", "request_id_header"):
            value = getattr(self, name)
            if not value or value != value.strip() or any(c in value for c in " :\r\n"):
                raise ConfigError(f"{name} must be a header name, got {value!r}", name)

    def replace(self, **changes: Any) -> ModelTapConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ModelTapConfig:
        """Build from `MODELTAP_*` and `OTEL_*` variables, then apply keyword overrides.

        Empty variables count as unset. Errors name the variable and its value.
        """
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        sources: dict[str, tuple[str, str]] = {}

        def take(var: str, field_name: str, convert: Any = None) -> None:
            raw = env.get(var, "").strip()
            if raw:
                kwargs[field_name] = convert(var, raw) if convert else raw
                sources[field_name] = (var, raw)

        enabled = True
        if raw := env.get("MODELTAP_ENABLED", "").strip():
            enabled = _parse_bool("MODELTAP_ENABLED", raw)
        if (raw := env.get("OTEL_SDK_DISABLED", "").strip()) and _parse_bool("OTEL_SDK_DISABLED", raw):
            enabled = False
        kwargs["enabled"] = enabled
        take("MODELTAP_MODEL_NAME", "model_name")
        take("MODELTAP_MODEL_VERSION", "model_version")
        take("MODELTAP_REFERENCE", "reference")
        take("MODELTAP_VERSION_HEADER", "version_header")
        take("MODELTAP_REQUEST_ID_HEADER", "request_id_header")
        take("MODELTAP_VIEWS_TOKEN", "views_token")
        take("MODELTAP_MAX_BODY_BYTES", "max_body_bytes", _parse_int)
        take("MODELTAP_MAX_PAYLOAD_ATTRIBUTE_BYTES", "max_payload_attribute_bytes", _parse_int)
        take("MODELTAP_QUEUE_MAX_RECORDS", "queue_max_records", _parse_int)
        take("MODELTAP_QUEUE_MAX_BYTES", "queue_max_bytes", _parse_int)
        take("MODELTAP_SERIES_LIMIT", "series_limit", _parse_int)
        take("MODELTAP_MAX_MODELS", "max_models", _parse_int)
        take("MODELTAP_MAX_VERSIONS_PER_MODEL", "max_versions_per_model", _parse_int)
        take("MODELTAP_MAX_FEATURES", "max_features", _parse_int)
        take("MODELTAP_MAX_OUTPUTS", "max_outputs", _parse_int)
        take("MODELTAP_EXPOSE_VALUES", "expose_values", _parse_bool)
        take("MODELTAP_WORKER_CPU_BUDGET", "worker_cpu_budget", _parse_float)
        take("MODELTAP_WORKER_INTERVAL_S", "worker_interval_s", _parse_float)
        take("MODELTAP_WINDOW_SLOTS", "window_slots", _parse_int)
        take("MODELTAP_WINDOW_SLOT_S", "window_slot_s", _parse_float)
        take("MODELTAP_PSI_WARNING", "psi_warning", _parse_float)
        take("MODELTAP_PSI_CRITICAL", "psi_critical", _parse_float)
        take("MODELTAP_DRIFT_ALPHA", "drift_alpha", _parse_float)
        take("MODELTAP_MIN_SAMPLES", "min_samples", _parse_int)
        take("MODELTAP_SIGMA_K", "sigma_k", _parse_float)
        take("MODELTAP_CAPTURE_PAYLOADS", "capture_payloads", _parse_bool)
        take(
            "MODELTAP_VIEWS_PREFIX",
            "views_prefix",
            lambda v, r: None if r.lower() in ("none", "off", "false") else r,
        )
        split = lambda v, r: tuple(x.strip() for x in r.split(",") if x.strip())  # noqa: E731
        take("MODELTAP_VIEWS_ALLOW", "views_allow", split)
        take("MODELTAP_CAPTURE_REQUEST_HEADERS", "capture_request_headers", split)
        take("MODELTAP_CAPTURE_RESPONSE_HEADERS", "capture_response_headers", split)
        take(
            "MODELTAP_DURATION_BUCKETS",
            "duration_buckets",
            lambda v, r: tuple(_parse_float(v, x.strip()) for x in r.split(",") if x.strip()),
        )
        take("MODELTAP_PROTOCOL_ROUTES", "protocol_routes", _parse_key_values)
        take("MODELTAP_PAYLOAD_MAPPING", "payload_mapping", _parse_json_object)
        take("MODELTAP_MONITOR", "monitor", lambda v, r: r.lower())
        take("MODELTAP_MONITOR_ID", "monitor_id")
        take("MODELTAP_MONITOR_MEMORY_BYTES", "monitor_memory_bytes", _parse_int)
        take("MODELTAP_LABEL_KEY", "label_key")
        take("MODELTAP_SEGMENT_FEATURE", "segment_feature")
        take("MODELTAP_RANKING_K", "ranking_k", _parse_int)
        take("MODELTAP_ALERT_WEBHOOK", "alert_webhooks", split)
        take("MODELTAP_ALERTMANAGER", "alertmanagers", split)
        take("MODELTAP_ALERT_SLACK_WEBHOOK", "alert_slack_webhooks", split)
        take("MODELTAP_ALERT_FOR_S", "alert_for_s", _parse_float)
        take("MODELTAP_ALERT_GROUP_WAIT_S", "alert_group_wait_s", _parse_float)
        take("MODELTAP_ALERT_REPEAT_S", "alert_repeat_s", _parse_float)
        take("MODELTAP_ALERT_RESOLVE_S", "alert_resolve_s", _parse_float)
        take("MODELTAP_ALERT_BOOST_S", "alert_boost_s", _parse_float)
        take("MODELTAP_ALERT_STATUS_URL", "alert_status_url")
        take("MODELTAP_EXPECTED_MODEL_VERSION", "expected_model_version")
        take("MODELTAP_COLD_START_REQUESTS", "cold_start_requests", _parse_int)
        take("MODELTAP_FRESHNESS_KEY", "freshness_key")
        take("MODELTAP_FRESHNESS_MAX_AGE_S", "freshness_max_age_s", _parse_float)
        take("MODELTAP_ALERT_RUNBOOK_URL", "alert_runbook_url")
        take("MODELTAP_ALERT_RUNBOOKS", "alert_runbooks", _parse_key_values)
        take("MODELTAP_OUTCOME_NAMES", "outcome_names", split)
        take("MODELTAP_BUSINESS_METRIC", "business_metric")
        take("MODELTAP_BUSINESS_FLOOR", "business_floor", _parse_float)
        take("MODELTAP_BUSINESS_MAX_DROP", "business_max_drop", _parse_float)
        take("MODELTAP_BUSINESS_ALPHA", "business_alpha", _parse_float)
        take("MODELTAP_BUSINESS_BASELINE_VERSION", "business_baseline_version")
        take("MODELTAP_LABEL_TTL_S", "label_ttl_s", _parse_float)
        take("MODELTAP_LABEL_STORE_BYTES", "label_store_bytes", _parse_int)
        take("MODELTAP_GPU_MEMORY_WARNING", "gpu_memory_warning", _parse_float)
        take("MODELTAP_GPU_MEMORY_CRITICAL", "gpu_memory_critical", _parse_float)
        kwargs["export"] = ExportConfig.from_env(env)
        for name in overrides:
            sources.pop(name, None)
        kwargs.update(overrides)
        config: ModelTapConfig = _construct(cls, kwargs, sources)
        return config


def config_document(config: ModelTapConfig) -> dict[str, Any]:
    """The configuration as plain JSON types (for the monitor process, which rebuilds it)."""
    return dataclasses.asdict(config)


def config_from_document(document: Mapping[str, Any]) -> ModelTapConfig:
    """Rebuild a configuration written by `config_document` (checked like any other; a malformed
    document raises `ConfigError` too)."""
    try:
        values = dict(document)
        export = dict(values.pop("export", {}))
        export["sampler"] = SamplerConfig(**export.get("sampler", {}))
        for name in _TUPLE_FIELDS:
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return ModelTapConfig(**values, export=ExportConfig(**export))
    except ConfigError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:
        # Not an object, an unknown setting, or a value the checks cannot even compare: the
        # monitor must report a configuration error, not crash on a TypeError. (Types are not
        # checked beyond what the constructors check: both modes accept the same configs.)
        raise ConfigError(f"malformed configuration document: {exc}") from None


_TUPLE_FIELDS = frozenset(
    f.name for f in dataclasses.fields(ModelTapConfig) if str(f.type).startswith("tuple")
)
