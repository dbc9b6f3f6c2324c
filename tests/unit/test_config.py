"""`ModelTapConfig`: keyword arguments and `MODELTAP_*` / `OTEL_*` variables are views of one object.

Every variable is parsed into its field; a bad value raises `ConfigError` at construction naming the
variable the user set (an operator reading the log must know which line of the manifest to fix);
keyword overrides win over the environment; an empty variable means the same as an unset one (as
the OpenTelemetry SDK configuration spec requires).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from modeltap import (
    ConfigError,
    ExportConfig,
    ModelTapConfig,
    ModelTapError,
    ModelTapMiddleware,
    SamplerConfig,
)
from tests.support.asgi_driver import Receive, Scope, Send

SAMPLERS = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]


async def noop_app(scope: Scope, receive: Receive, send: Send) -> None:
    return None


def test_defaults_from_an_empty_environment() -> None:
    config = ModelTapConfig.from_env({})

    assert config == ModelTapConfig()
    assert config.enabled is True
    assert config.views_prefix == "/modeltap"
    assert config.capture_payloads is False
    assert config.max_body_bytes == 1024 * 1024
    assert config.export.endpoint is None
    assert config.export.metrics_target is None
    assert config.export.traces_target is None
    assert config.export.sampler == SamplerConfig("parentbased_traceidratio", 0.1)


def test_config_error_is_a_modeltap_error_and_a_value_error() -> None:
    with pytest.raises(ConfigError) as info:
        ModelTapConfig(max_body_bytes=-1)
    assert isinstance(info.value, ModelTapError)
    assert isinstance(info.value, ValueError)
    assert "max_body_bytes" in str(info.value)
    assert "-1" in str(info.value)


# --- MODELTAP_* ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "field", "expected"),
    [
        ("MODELTAP_MODEL_NAME", "churn", "model_name", "churn"),
        ("MODELTAP_MODEL_NAME", "  churn  ", "model_name", "churn"),
        ("MODELTAP_MODEL_VERSION", "v3", "model_version", "v3"),
        ("MODELTAP_REFERENCE", "/models/reference.json", "reference", "/models/reference.json"),
        ("MODELTAP_VERSION_HEADER", "x-version", "version_header", "x-version"),
        ("MODELTAP_REQUEST_ID_HEADER", "x-correlation-id", "request_id_header", "x-correlation-id"),
        ("MODELTAP_VIEWS_TOKEN", "s3cret", "views_token", "s3cret"),
        ("MODELTAP_MAX_BODY_BYTES", "2048", "max_body_bytes", 2048),
        ("MODELTAP_MAX_BODY_BYTES", "0", "max_body_bytes", 0),
        ("MODELTAP_MAX_PAYLOAD_ATTRIBUTE_BYTES", "4096", "max_payload_attribute_bytes", 4096),
        ("MODELTAP_QUEUE_MAX_RECORDS", "17", "queue_max_records", 17),
        ("MODELTAP_QUEUE_MAX_BYTES", "1048576", "queue_max_bytes", 1048576),
        ("MODELTAP_SERIES_LIMIT", "50", "series_limit", 50),
        ("MODELTAP_CAPTURE_PAYLOADS", "true", "capture_payloads", True),
        ("MODELTAP_CAPTURE_PAYLOADS", "ON", "capture_payloads", True),
        ("MODELTAP_CAPTURE_PAYLOADS", "0", "capture_payloads", False),
        ("MODELTAP_VIEWS_PREFIX", "/_monitor", "views_prefix", "/_monitor"),
        ("MODELTAP_VIEWS_PREFIX", "none", "views_prefix", None),
        ("MODELTAP_VIEWS_PREFIX", "off", "views_prefix", None),
        (
            "MODELTAP_VIEWS_ALLOW",
            "10.0.0.0/8, 192.168.1.7 ,fd00::/8",
            "views_allow",
            ("10.0.0.0/8", "192.168.1.7", "fd00::/8"),
        ),
        (
            "MODELTAP_CAPTURE_REQUEST_HEADERS",
            "x-tenant, x-region,",
            "capture_request_headers",
            ("x-tenant", "x-region"),
        ),
        (
            "MODELTAP_CAPTURE_RESPONSE_HEADERS",
            "x-model-version",
            "capture_response_headers",
            ("x-model-version",),
        ),
        ("MODELTAP_ENABLED", "false", "enabled", False),
        ("MODELTAP_ENABLED", "No", "enabled", False),
        ("MODELTAP_ENABLED", "1", "enabled", True),
        ("OTEL_SDK_DISABLED", "true", "enabled", False),
        ("OTEL_SDK_DISABLED", "True", "enabled", False),
        ("OTEL_SDK_DISABLED", "false", "enabled", True),
    ],
)
def test_modeltap_variables_are_parsed(variable: str, raw: str, field: str, expected: object) -> None:
    config = ModelTapConfig.from_env({variable: raw})

    assert getattr(config, field) == expected
    # Nothing else moved.
    others = {f.name for f in dataclasses.fields(ModelTapConfig)} - {field}
    assert {name: getattr(config, name) for name in others} == {
        name: getattr(ModelTapConfig(), name) for name in others
    }


@pytest.mark.parametrize("variable", ["MODELTAP_ENABLED", "OTEL_SDK_DISABLED"])
def test_empty_boolean_means_unset(variable: str) -> None:
    """OTel configuration spec: an empty value is interpreted exactly as an unset variable."""
    assert ModelTapConfig.from_env({variable: ""}).enabled is True
    assert ModelTapConfig.from_env({variable: "   "}).enabled is True


def test_both_switches_must_allow_it() -> None:
    assert ModelTapConfig.from_env({"MODELTAP_ENABLED": "true", "OTEL_SDK_DISABLED": "true"}).enabled is False
    assert (
        ModelTapConfig.from_env({"MODELTAP_ENABLED": "false", "OTEL_SDK_DISABLED": "false"}).enabled is False
    )


def test_keyword_overrides_beat_the_environment() -> None:
    environ = {
        "MODELTAP_MODEL_NAME": "from-env",
        "MODELTAP_MAX_BODY_BYTES": "10",
        "MODELTAP_ENABLED": "false",
    }

    config = ModelTapConfig.from_env(environ, model_name="from-kwargs", max_body_bytes=20, enabled=True)

    assert (config.model_name, config.max_body_bytes, config.enabled) == ("from-kwargs", 20, True)


def test_from_env_reads_the_process_environment_by_default(
    clean_otel_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELTAP_MODEL_NAME", "from-process")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "svc")

    config = ModelTapConfig.from_env()

    assert config.model_name == "from-process"
    assert config.export.service_name == "svc"


def test_middleware_options_are_config_fields(clean_otel_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELTAP_MODEL_NAME", "from-env")
    monkeypatch.setenv("MODELTAP_MAX_BODY_BYTES", "4096")
    middleware = ModelTapMiddleware(noop_app, model_name="from-kwargs", views_prefix=False)
    try:
        assert middleware.config.model_name == "from-kwargs"
        assert middleware.config.max_body_bytes == 4096
        assert middleware.config.views_prefix is None
    finally:
        middleware.tap.shutdown()


def test_middleware_config_plus_options() -> None:
    base = ModelTapConfig.from_env({}, model_name="a")
    middleware = ModelTapMiddleware(noop_app, config=base, model_version="7")
    try:
        assert (middleware.config.model_name, middleware.config.model_version) == ("a", "7")
    finally:
        middleware.tap.shutdown()


def test_middleware_rejects_bad_options_at_construction() -> None:
    with pytest.raises(ConfigError, match="max_body_bytes"):
        ModelTapMiddleware(noop_app, config=ModelTapConfig.from_env({}), max_body_bytes=-5)
    unknown: dict[str, Any] = {"no_such_option": 1}
    with pytest.raises(TypeError):
        ModelTapMiddleware(noop_app, config=ModelTapConfig.from_env({}), **unknown)


# --- bad values name the variable -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("MODELTAP_ENABLED", "maybe"),
        ("OTEL_SDK_DISABLED", "sometimes"),
        ("MODELTAP_CAPTURE_PAYLOADS", "2"),
        ("MODELTAP_MAX_BODY_BYTES", "1MiB"),
        ("MODELTAP_MAX_BODY_BYTES", "1.5"),
        ("MODELTAP_MAX_PAYLOAD_ATTRIBUTE_BYTES", "lots"),
        ("MODELTAP_QUEUE_MAX_RECORDS", "ten"),
        ("MODELTAP_QUEUE_MAX_BYTES", "0x10"),
        ("MODELTAP_SERIES_LIMIT", "many"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "=v"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "ten"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
        ("OTEL_BSP_SCHEDULE_DELAY", "later"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "1e3"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "big"),
        ("OTEL_RESOURCE_ATTRIBUTES", "team"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
        ("OTEL_TRACES_SAMPLER_ARG", "half"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ("OTEL_TRACES_SAMPLER_ARG", "-0.1"),
    ],
)
def test_unparseable_values_raise_config_error_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelTapConfig.from_env({variable: raw})

    assert variable in str(info.value)
    if variable == "OTEL_EXPORTER_OTLP_HEADERS":  # credentials: the value is never repeated
        assert repr(raw.strip()) not in str(info.value)
    else:
        assert raw.strip() in str(info.value)


@pytest.mark.parametrize(
    ("variable", "raw", "secret"),
    [
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-honeycomb-team=hcSECRETKEY123,dataset", "hcSECRETKEY123"),
        ("MODELTAP_ALERT_WEBHOOK", "ftp://hooks.example/services/T0/B0/XXSECRETXX", "XXSECRETXX"),
        ("MODELTAP_ALERT_SLACK_WEBHOOK", "hooks.slack.com/services/T0/B0/XXSECRETXX", "XXSECRETXX"),
        ("MODELTAP_ALERTMANAGER", "alertmanager:9093?token=XXSECRETXX", "XXSECRETXX"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://user:XXSECRETXX@collector:4318", "XXSECRETXX"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://user:XXSECRETXX@[::1", "XXSECRETXX"),
    ],
)
def test_errors_never_repeat_a_credential(variable: str, raw: str, secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelTapConfig.from_env({variable: raw})

    assert variable in str(info.value)
    assert secret not in str(info.value)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("MODELTAP_MAX_BODY_BYTES", "-1"),
        ("MODELTAP_MAX_PAYLOAD_ATTRIBUTE_BYTES", "-2"),
        ("MODELTAP_QUEUE_MAX_RECORDS", "0"),
        ("MODELTAP_QUEUE_MAX_BYTES", "0"),
        ("MODELTAP_SERIES_LIMIT", "0"),
        ("MODELTAP_VERSION_HEADER", "x version"),
        ("MODELTAP_VERSION_HEADER", "x-version:"),
        ("MODELTAP_REQUEST_ID_HEADER", "x id"),
        ("MODELTAP_VIEWS_PREFIX", "modeltap"),
        ("MODELTAP_VIEWS_PREFIX", "/modeltap/"),
        ("MODELTAP_VIEWS_ALLOW", "10.0.0.0/8,not-a-network"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4318"),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "localhost"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-5"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "-1"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
    ],
)
def test_out_of_range_values_raise_config_error_naming_the_variable(variable: str, raw: str) -> None:
    """Parsed fine but invalid: the operator still needs the variable's name, not the field's."""
    with pytest.raises(ConfigError) as info:
        ModelTapConfig.from_env({variable: raw})

    assert variable in str(info.value)


# --- OTEL_* -------------------------------------------------------------------------------------------


def export_of(environ: dict[str, str]) -> ExportConfig:
    return ModelTapConfig.from_env(environ).export


def test_otlp_base_endpoint_derives_signal_urls() -> None:
    export = export_of({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})

    assert export.endpoint == "http://collector:4318/"
    assert export.metrics_target == "http://collector:4318/v1/metrics"
    assert export.traces_target == "http://collector:4318/v1/traces"


def test_signal_endpoints_are_used_as_given() -> None:
    export = export_of(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://metrics.example:443/custom",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces.example:4318/t",
        }
    )

    assert export.metrics_target == "https://metrics.example:443/custom"
    assert export.traces_target == "http://traces.example:4318/t"


def test_grpc_protocol_uses_the_endpoint_unchanged() -> None:
    export = export_of(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )

    assert export.protocol == "grpc"
    assert export.metrics_target == export.traces_target == "http://collector:4317"


@pytest.mark.parametrize(
    ("variable", "target"), [("OTEL_METRICS_EXPORTER", "metrics"), ("OTEL_TRACES_EXPORTER", "traces")]
)
@pytest.mark.parametrize("value", ["none", "NONE", " none "])
def test_exporter_none_disables_one_signal(variable: str, target: str, value: str) -> None:
    export = export_of({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", variable: value})

    assert getattr(export, f"{target}_target") is None
    other = "traces" if target == "metrics" else "metrics"
    assert getattr(export, f"{other}_target") == f"http://collector:4318/v1/{other}"


def test_headers_and_resource_attributes_are_percent_decoded_pairs() -> None:
    export = export_of(
        {
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=abc%3D%3D, x-tenant = blue",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=ml%20platform,",
            "OTEL_SERVICE_NAME": " scorer ",
        }
    )

    assert dict(export.headers) == {"api-key": "abc==", "x-tenant": "blue"}
    assert dict(export.resource_attributes) == {"deployment.environment": "prod", "team": "ml platform"}
    assert export.service_name == "scorer"


@pytest.mark.parametrize(("raw", "seconds"), [("5000", 5.0), ("10000", 10.0), ("30", 0.03), ("2.5", 0.0025)])
def test_otlp_timeout_is_milliseconds(raw: str, seconds: float) -> None:
    """OTEL_EXPORTER_OTLP_TIMEOUT is milliseconds, as the specification says."""
    assert export_of({"OTEL_EXPORTER_OTLP_TIMEOUT": raw}).timeout_s == pytest.approx(seconds)


def test_interval_variables_are_milliseconds() -> None:
    export = export_of({"OTEL_METRIC_EXPORT_INTERVAL": "15000", "OTEL_BSP_SCHEDULE_DELAY": "250"})

    assert export.metric_export_interval_s == pytest.approx(15.0)
    assert export.span_export_interval_s == pytest.approx(0.25)


def test_span_queue_sizes() -> None:
    export = export_of({"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10"})

    assert (export.span_queue_max, export.span_batch_max) == (100, 10)


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_standard_sampler_name_is_accepted(name: str) -> None:
    sampler = export_of({"OTEL_TRACES_SAMPLER": name, "OTEL_TRACES_SAMPLER_ARG": "0.25"}).sampler

    assert sampler == SamplerConfig(name, 0.25)


def test_sampler_name_is_case_insensitive_and_ratio_bounds_are_inclusive() -> None:
    assert (
        export_of({"OTEL_TRACES_SAMPLER": "ParentBased_TraceIdRatio"}).sampler.name
        == "parentbased_traceidratio"
    )
    assert export_of({"OTEL_TRACES_SAMPLER_ARG": "0"}).sampler.ratio == 0.0
    assert export_of({"OTEL_TRACES_SAMPLER_ARG": "1"}).sampler.ratio == 1.0


def test_sampler_config_validates_directly() -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER"):
        SamplerConfig("probabilistic", 0.5)
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        SamplerConfig("traceidratio", 2.0)


# --- views_prefix and other field validation -----------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/modeltap", "/_monitor", "/a/b", None])
def test_valid_views_prefixes(prefix: str | None) -> None:
    assert ModelTapConfig(views_prefix=prefix).views_prefix == prefix


@pytest.mark.parametrize("prefix", ["", "/", "modeltap", "/modeltap/", "monitor/"])
def test_invalid_views_prefixes(prefix: str) -> None:
    with pytest.raises(ConfigError, match="views_prefix"):
        ModelTapConfig(views_prefix=prefix)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_body_bytes", -1),
        ("max_payload_attribute_bytes", -1),
        ("queue_max_records", 0),
        ("queue_max_bytes", 0),
        ("series_limit", 0),
        ("worker_interval_s", 0.0),
        ("snapshot_interval_s", -1.0),
        ("overload_watermark", 0.0),
        ("overload_watermark", 1.5),
        ("views_allow", ("10.0.0.0/33",)),
        ("version_header", ""),
        ("version_header", " x-version"),
        ("request_id_header", "x-id\r\nset-cookie"),
    ],
)
def test_invalid_fields_raise_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        ModelTapConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("protocol", "thrift"),
        ("timeout_s", 0.0),
        ("metric_export_interval_s", -1.0),
        ("span_export_interval_s", 0.0),
        ("shutdown_timeout_s", 0.0),
        ("span_queue_max", 0),
        ("span_batch_max", 0),
        ("endpoint", "collector:4318"),
    ],
)
def test_invalid_export_fields_raise(field: str, value: Any) -> None:
    with pytest.raises(ConfigError):
        ExportConfig(**{field: value})


def test_replace_validates_too() -> None:
    config = ModelTapConfig()
    assert config.replace(max_body_bytes=10).max_body_bytes == 10
    with pytest.raises(ConfigError):
        config.replace(queue_max_records=0)


def test_process_environment_without_variables_gives_defaults(clean_otel_env: None) -> None:
    assert ModelTapConfig.from_env() == ModelTapConfig()


@pytest.mark.parametrize("setting", ["alert_webhooks", "alertmanagers", "alert_slack_webhooks"])
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:80a/services/T0/B0/XXSECRETXX", "port"),
        ("http://hooks.example:99999/services/T0/B0/XXSECRETXX", "port"),
        ("http://hooks.example:0/services/T0/B0/XXSECRETXX", "port 0"),
        ("https://hooks.slack.com/services/T0/B0/XXSECRET XX", "space"),
        ("https://hooks.slack.com/services/T0/B0/XXSECRET\nXX", "control character"),
        ("https://hooks.slack.com/services/T0/B0/XXSECRETé", "ASCII"),
        ("http://[::1/services/T0/B0/XXSECRETXX", "IPv6"),
        ("http://user:XXSECRETXX@hooks.example/hook", "user info"),
        ("ftp://hooks.example/services/T0/B0/XXSECRETXX", "scheme 'ftp'"),
    ],
)
def test_a_receiver_url_that_can_never_be_posted_to_is_refused_at_start(
    setting: str, url: str, problem: str
) -> None:
    # None of these can be posted to: found at start, not by the first notification (whose
    # error, ending the sender's thread, quoted the path: a Slack webhook's credential).
    receivers: dict[str, Any] = {setting: (url,)}
    with pytest.raises(ConfigError) as info:
        ModelTapConfig(**receivers)
    assert setting in str(info.value)
    assert problem in str(info.value)
    assert "XXSECRET" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://alertmanager:9093",
        "https://hooks.slack.com/services/T0/B0/XX%20XX?token=a,b",
        "http://[::1]:9093/hook",
        "https://hooks.example/hook#part",
    ],
)
def test_receiver_urls_that_can_be_posted_to_are_taken(url: str) -> None:
    assert ModelTapConfig(alert_webhooks=(url,)).alert_webhooks == (url,)
