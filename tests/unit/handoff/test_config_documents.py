"""The configuration crosses to the monitor as a JSON document: every setting survives the trip, and
a document with a bad value is refused with ConfigError like any other configuration."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeltap.config import (
    ExportConfig,
    ModelTapConfig,
    SamplerConfig,
    config_document,
    config_from_document,
)
from modeltap.errors import ConfigError


def through_json(config: ModelTapConfig) -> ModelTapConfig:
    return config_from_document(json.loads(json.dumps(config_document(config))))


EVERYTHING = ModelTapConfig(
    enabled=False,
    model_name="churn",
    model_version="v7",
    reference="/srv/reference.json",
    max_body_bytes=12345,
    capture_payloads=True,
    max_payload_attribute_bytes=777,
    capture_request_headers=("x-tenant", "x-region"),
    capture_response_headers=("x-served-by",),
    protocol_routes={"/v2/": "oip_v2", "/v1/": "kserve_v1"},
    payload_mapping={"features": "rows[*]", "outputs": "scores[*]"},
    version_header="x-version",
    request_id_header="x-trace",
    queue_max_records=321,
    queue_max_bytes=4096,
    worker_interval_s=0.25,
    overload_watermark=0.75,
    worker_cpu_budget=0.5,
    window_slots=4,
    window_slot_s=2.5,
    psi_warning=0.05,
    psi_critical=0.5,
    drift_alpha=0.01,
    min_samples=7,
    sigma_k=2.5,
    views_prefix="/mt",
    views_token="s3cret",
    views_allow=("10.0.0.0/8", "fd00::/8"),
    series_limit=99,
    max_models=3,
    max_versions_per_model=2,
    max_features=9,
    max_outputs=4,
    expose_values=True,
    snapshot_interval_s=1.5,
    monitor="inline",
    monitor_id="srv-1",
    monitor_memory_bytes=128 * 1024 * 1024,
    duration_buckets=(0.001, 0.01, 0.1),
    label_key="transaction_id",
    segment_feature="region",
    ranking_k=5,
    alert_webhooks=("http://hooks.example/a",),
    alertmanagers=("http://am.example:9093",),
    alert_slack_webhooks=("https://hooks.slack.example/x",),
    alert_for_s=5.0,
    alert_group_wait_s=2.0,
    alert_repeat_s=60.0,
    alert_resolve_s=7.0,
    alert_boost_s=120.0,
    alert_status_url="https://models.example.com/churn/modeltap/",
    expected_model_version="7",
    cold_start_requests=5,
    freshness_key="event_time",
    freshness_max_age_s=900.0,
    alert_runbook_url="https://wiki.example.com/runbooks",
    alert_runbooks={"latency": "https://wiki.example.com/latency"},
    outcome_names=("conversion", "order_value", "signup"),
    business_metric="revenue_per_prediction",
    business_floor=1.5,
    business_max_drop=0.2,
    business_alpha=0.05,
    business_baseline_version="6",
    label_ttl_s=600.0,
    label_store_bytes=8 * 1024 * 1024,
    gpu_memory_warning=0.8,
    gpu_memory_critical=0.95,
    export=ExportConfig(
        endpoint="http://collector:4318",
        metrics_endpoint="https://metrics.example/v1/metrics",
        traces_endpoint="https://traces.example/v1/traces",
        protocol="grpc",
        headers={"authorization": "Bearer t", "x-scope": "a=b"},
        timeout_s=2.5,
        metric_export_interval_s=15.0,
        metrics_enabled=False,
        traces_enabled=False,
        service_name="svc",
        resource_attributes={"deployment.environment": "prod"},
        sampler=SamplerConfig("traceidratio", 0.25),
        span_queue_max=10,
        span_batch_max=5,
        span_export_interval_s=0.5,
        shutdown_timeout_s=1.5,
    ),
)


def test_the_fixture_sets_every_field() -> None:
    """Every setting differs from its default, so the round trip below covers each of them (a
    new setting fails here until the fixture sets it)."""

    def unset(instance: Any) -> list[str]:
        default = type(instance)()
        return [
            f.name
            for f in dataclasses.fields(instance)
            if getattr(instance, f.name) == getattr(default, f.name)
        ]

    assert unset(EVERYTHING) == []
    assert unset(EVERYTHING.export) == []
    assert unset(EVERYTHING.export.sampler) == []


def test_a_config_with_every_field_set_survives_json() -> None:
    back = through_json(EVERYTHING)
    assert back == EVERYTHING
    assert isinstance(back.capture_request_headers, tuple)
    assert isinstance(back.views_allow, tuple)
    assert isinstance(back.export.sampler, SamplerConfig)


def test_defaults_and_nones_survive_json() -> None:
    config = ModelTapConfig(views_prefix=None, worker_cpu_budget=None, payload_mapping=None)
    assert through_json(config) == config
    assert through_json(ModelTapConfig()) == ModelTapConfig()


names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=":"), min_size=1)
words = st.text(max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    st.builds(
        ModelTapConfig,
        enabled=st.booleans(),
        model_name=st.none() | words,
        max_body_bytes=st.integers(0, 2**40),
        capture_request_headers=st.lists(words, max_size=3).map(tuple),
        protocol_routes=st.dictionaries(words.map(lambda s: "/" + s), st.sampled_from(["json", "openai"])),
        payload_mapping=st.none() | st.dictionaries(words, words, max_size=3),
        worker_cpu_budget=st.none() | st.floats(0.0, 1.0),
        window_slot_s=st.floats(1e-6, 1e9),
        psi_warning=st.floats(0.0, 0.1),
        views_prefix=st.none() | words.map(lambda s: "/" + s + "x"),
        views_token=st.none() | words,
        monitor=st.sampled_from(["process", "inline"]),
        monitor_id=st.none() | st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
        monitor_memory_bytes=st.integers(64 * 1024 * 1024, 2**50),
        version_header=names,
        export=st.builds(
            ExportConfig,
            endpoint=st.none() | st.just("http://localhost:4318"),
            headers=st.dictionaries(words, words, max_size=3),
            timeout_s=st.floats(1e-3, 1e6),
            sampler=st.builds(SamplerConfig, st.just("always_on"), st.floats(0.0, 1.0)),
        ),
    )
)
def test_configs_survive_json(config: ModelTapConfig) -> None:
    assert through_json(config) == config


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        # Values the constructors refuse: named in the message.
        ({"max_models": 0}, "max_models"),
        ({"max_body_bytes": -1}, "max_body_bytes"),
        ({"monitor": "thread"}, "monitor"),
        ({"monitor_id": "a b"}, "monitor_id"),
        ({"monitor_memory_bytes": 1024}, "monitor_memory_bytes"),
        ({"views_allow": ["not-a-network"]}, "views_allow"),
        ({"protocol_routes": {"/v2/": "grpc"}}, "protocol_routes"),
        ({"version_header": "x version"}, "version_header"),
        ({"export": {"protocol": "carrier-pigeon"}}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"export": {"endpoint": "collector:4318"}}, "endpoint"),
        ({"export": {"sampler": {"name": "sometimes", "ratio": 0.5}}}, "OTEL_TRACES_SAMPLER"),
        ({"export": {"sampler": {"name": "always_on", "ratio": 2}}}, "OTEL_TRACES_SAMPLER_ARG"),
        # A document no configuration could have written: a ConfigError, not a TypeError.
        ({"max_models": "many"}, None),
        ({"sigma_k": None}, None),
        ({"capture_request_headers": 5}, None),
        ({"protocol_routes": ["/v2/"]}, None),
        ({"no_such_setting": 1}, "no_such_setting"),
        ({"export": "http://collector"}, None),
        ({"export": {"timeout_s": "soon"}}, None),
        ({"export": {"sampler": "always_on"}}, None),
        ({"export": {"sampler": {"name": "always_on", "extra": 1}}}, "extra"),
    ],
)
def test_a_bad_value_in_a_document_raises_config_error(change: dict[str, Any], setting: str | None) -> None:
    document = json.loads(json.dumps(config_document(ModelTapConfig())))
    for name, value in change.items():
        if name == "export" and isinstance(value, dict):
            document["export"].update(value)
        else:
            document[name] = value
    with pytest.raises(ConfigError) as caught:
        config_from_document(document)
    if setting is not None:
        assert setting in str(caught.value)


def test_a_document_that_is_not_an_object_raises_config_error() -> None:
    with pytest.raises(ConfigError):
        config_from_document(["not", "a", "mapping"])  # type: ignore[arg-type]
