"""One configuration object; keyword arguments and environment variables are views of it.

`ModelTapConfig.from_env()` reads `MODELTAP_*` variables for modeltap's own settings and the
standard `OTEL_*` variables for export, then applies explicit keyword overrides. Every value is
validated at construction; a bad value raises `ConfigError` naming the setting.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from modeltap.errors import ConfigError

__all__ = ["ExportConfig", "ModelTapConfig", "SamplerConfig"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

# Semantic-convention buckets for http.server.request.duration (seconds).
DEFAULT_DURATION_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

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


def _parse_key_values(name: str, raw: str) -> dict[str, str]:
    """Parse the W3C-baggage-like `k1=v1,k2=v2` lists the OTEL_* variables use."""
    from urllib.parse import unquote

    result: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{name} must be a list of key=value pairs, got {raw!r}")
        result[unquote(key.strip())] = unquote(value.strip())
    return result


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
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"OTLP {name} must be an http(s) URL with a host, got {value!r}")
        for name in ("timeout_s", "metric_export_interval_s", "span_export_interval_s", "shutdown_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.span_queue_max < 1 or self.span_batch_max < 1:
            raise ConfigError("span_queue_max and span_batch_max must be >= 1")

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
        env = environ
        kwargs: dict[str, Any] = {}
        if v := env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
            kwargs["endpoint"] = v
        if v := env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip():
            kwargs["metrics_endpoint"] = v
        if v := env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
            kwargs["traces_endpoint"] = v
        if v := env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip():
            kwargs["protocol"] = v
        if v := env.get("OTEL_EXPORTER_OTLP_HEADERS", "").strip():
            kwargs["headers"] = _parse_key_values("OTEL_EXPORTER_OTLP_HEADERS", v)
        if v := env.get("OTEL_EXPORTER_OTLP_TIMEOUT", "").strip():
            # The spec says milliseconds; the Python exporters read seconds. Follow the spec:
            # values above 1000 are unambiguous milliseconds, smaller ones are taken as seconds.
            raw = _parse_float("OTEL_EXPORTER_OTLP_TIMEOUT", v)
            kwargs["timeout_s"] = raw / 1000.0 if raw > 1000 else raw
        if v := env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip():
            kwargs["metric_export_interval_s"] = _parse_float("OTEL_METRIC_EXPORT_INTERVAL", v) / 1000.0
        if v := env.get("OTEL_BSP_SCHEDULE_DELAY", "").strip():
            kwargs["span_export_interval_s"] = _parse_float("OTEL_BSP_SCHEDULE_DELAY", v) / 1000.0
        if v := env.get("OTEL_BSP_MAX_QUEUE_SIZE", "").strip():
            kwargs["span_queue_max"] = _parse_int("OTEL_BSP_MAX_QUEUE_SIZE", v)
        if v := env.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "").strip():
            kwargs["span_batch_max"] = _parse_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", v)
        if env.get("OTEL_METRICS_EXPORTER", "otlp").strip().lower() == "none":
            kwargs["metrics_enabled"] = False
        if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
            kwargs["traces_enabled"] = False
        if v := env.get("OTEL_SERVICE_NAME", "").strip():
            kwargs["service_name"] = v
        if v := env.get("OTEL_RESOURCE_ATTRIBUTES", "").strip():
            kwargs["resource_attributes"] = _parse_key_values("OTEL_RESOURCE_ATTRIBUTES", v)
        sampler_name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or SamplerConfig.name
        ratio = SamplerConfig.ratio
        if v := env.get("OTEL_TRACES_SAMPLER_ARG", "").strip():
            ratio = _parse_float("OTEL_TRACES_SAMPLER_ARG", v)
        kwargs["sampler"] = SamplerConfig(sampler_name, ratio)
        return cls(**kwargs)


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
    version_header: str = "x-model-version"
    request_id_header: str = "x-request-id"
    queue_max_records: int = 10_000
    queue_max_bytes: int = 64 * 1024 * 1024
    worker_interval_s: float = 0.02
    # Share of the queue at which the tap starts sampling exchanges instead of taking all.
    overload_watermark: float = 0.5
    views_prefix: str | None = "/modeltap"  # None disables the local views
    views_token: str | None = None
    views_allow: tuple[str, ...] = ()  # CIDRs besides loopback allowed to read the views
    series_limit: int = 2000
    snapshot_interval_s: float = 0.5
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_payload_attribute_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("queue_max_records", "queue_max_bytes", "series_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("worker_interval_s", "snapshot_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0.0 < self.overload_watermark <= 1.0:
            raise ConfigError(f"overload_watermark must be within (0, 1], got {self.overload_watermark!r}")
        if self.views_prefix is not None and (
            not self.views_prefix.startswith("/") or self.views_prefix.endswith("/")
        ):
            raise ConfigError(
                f"views_prefix must start with '/' and not end with '/', got {self.views_prefix!r}"
            )
        for cidr in self.views_allow:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"views_allow entries must be IP networks, got {cidr!r}") from None
        for name in ("version_header", "request_id_header"):
            value = getattr(self, name)
            if not value or value != value.strip() or any(c in value for c in " :\r\n"):
                raise ConfigError(f"{name} must be a header name, got {value!r}")

    def replace(self, **changes: Any) -> ModelTapConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ModelTapConfig:
        """Build from `MODELTAP_*` and `OTEL_*` variables, then apply keyword overrides."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        disabled_by_otel = _parse_bool("OTEL_SDK_DISABLED", env.get("OTEL_SDK_DISABLED", "false"))
        kwargs["enabled"] = _parse_bool("MODELTAP_ENABLED", env.get("MODELTAP_ENABLED", "true")) and (
            not disabled_by_otel
        )
        text = {
            "MODELTAP_MODEL_NAME": "model_name",
            "MODELTAP_MODEL_VERSION": "model_version",
            "MODELTAP_REFERENCE": "reference",
            "MODELTAP_VERSION_HEADER": "version_header",
            "MODELTAP_REQUEST_ID_HEADER": "request_id_header",
            "MODELTAP_VIEWS_TOKEN": "views_token",
        }
        for var, name in text.items():
            if v := env.get(var, "").strip():
                kwargs[name] = v
        integers = {
            "MODELTAP_MAX_BODY_BYTES": "max_body_bytes",
            "MODELTAP_MAX_PAYLOAD_ATTRIBUTE_BYTES": "max_payload_attribute_bytes",
            "MODELTAP_QUEUE_MAX_RECORDS": "queue_max_records",
            "MODELTAP_QUEUE_MAX_BYTES": "queue_max_bytes",
            "MODELTAP_SERIES_LIMIT": "series_limit",
        }
        for var, name in integers.items():
            if v := env.get(var, "").strip():
                kwargs[name] = _parse_int(var, v)
        if v := env.get("MODELTAP_CAPTURE_PAYLOADS", "").strip():
            kwargs["capture_payloads"] = _parse_bool("MODELTAP_CAPTURE_PAYLOADS", v)
        if "MODELTAP_VIEWS_PREFIX" in env:
            v = env["MODELTAP_VIEWS_PREFIX"].strip()
            kwargs["views_prefix"] = None if v.lower() in ("", "none", "off", "false") else v
        for var, name in (
            ("MODELTAP_VIEWS_ALLOW", "views_allow"),
            ("MODELTAP_CAPTURE_REQUEST_HEADERS", "capture_request_headers"),
            ("MODELTAP_CAPTURE_RESPONSE_HEADERS", "capture_response_headers"),
        ):
            if v := env.get(var, "").strip():
                kwargs[name] = tuple(x.strip() for x in v.split(",") if x.strip())
        kwargs["export"] = ExportConfig.from_env(env)
        kwargs.update(overrides)
        return cls(**kwargs)
