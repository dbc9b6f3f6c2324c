"""`SidecarSettings` and `resolve()`: flags, `MODELTAP_*` variables and a TOML file are views of one
settings object (RELIABILITY.md G5: fail fast at start-up with a clear message).

Every invalid value raises `ConfigError` naming the setting (and, for a variable, the variable and the
value an operator has to fix); precedence is flags > variables > file > defaults; the file has exactly
two tables and no unknown keys; monitoring settings from the file apply only where their variable is
unset; and the proxy port never serves the local views.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from modeltap.config import ModelTapConfig
from modeltap.errors import ConfigError
from modeltap.sidecar.settings import FIELDS, HELP, SidecarSettings, env_name, resolve

UPSTREAM = "http://127.0.0.1:8080"
POSITIVE_S = (
    "connect_timeout_s",
    "response_timeout_s",
    "header_timeout_s",
    "body_timeout_s",
    "probe_interval_s",
)
SECONDS = tuple(name for name in FIELDS if name.endswith("_s"))
AT_LEAST_ONE = (
    "max_url_bytes",
    "max_header_bytes",
    "max_headers",
    "max_request_body_bytes",
    "max_inflight",
    "readiness_failures",
)


def settings(**values: Any) -> SidecarSettings:
    values.setdefault("upstream", UPSTREAM)
    return SidecarSettings(**values)


def config_error(setting: str, **values: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        settings(**values)
    assert info.value.setting == setting, str(info.value)
    assert setting in str(info.value)
    return info.value


def write(tmp_path: Path, text: str, name: str = "modeltap.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def no_flags() -> dict[str, Any]:
    return dict.fromkeys(FIELDS)


def resolve_with(
    flags: dict[str, Any] | None = None,
    monitoring_flags: dict[str, Any] | None = None,
    config_file: str | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[SidecarSettings, ModelTapConfig]:
    given = no_flags()
    given.update(flags or {})
    return resolve(given, monitoring_flags or {}, config_file, environ or {})


# ---- SidecarSettings ----------------------------------------------------------------------------


def test_defaults_are_valid_and_documented() -> None:
    s = settings()
    assert (s.upstream_host, s.upstream_port) == ("127.0.0.1", 8080)
    assert set(HELP) == set(FIELDS)
    # Drain defaults stay under Kubernetes' 30 s grace period (CLARIFICATIONS.md, issue 5).
    assert s.drain_delay_s + s.drain_timeout_s + ModelTapConfig().export.shutdown_timeout_s < 30


def test_an_upstream_is_required() -> None:
    error = config_error("upstream", upstream="")
    assert "--upstream" in str(error)
    assert "MODELTAP_UPSTREAM" in str(error)


@pytest.mark.parametrize(
    "upstream",
    [
        "https://127.0.0.1:8443",  # TLS to the upstream is not offered
        "ftp://127.0.0.1:21",
        "127.0.0.1:8080",  # no scheme
        "http://127.0.0.1:8080/v1/models",  # a path
        "http://127.0.0.1:8080?x=1",  # a query
        "http://127.0.0.1:8080#frag",
        "http://user:secret@127.0.0.1:8080",  # credentials
        "http://user@127.0.0.1:8080",
        "http://:secret@127.0.0.1:8080",  # a password alone is still a credential
        "http://:8080",  # no host
        "http://",
        "http:///v1",
        "http://127.0.0.1:99999",  # port out of range
        "http://127.0.0.1:http",
        "http://127.0.0.1:-1",
        "http://127.0.0.1:0",  # no port to connect to (would silently mean 80)
        "http://[::1",  # not a URL urllib can split
    ],
)
def test_bad_upstream_urls_are_rejected(upstream: str) -> None:
    error = config_error("upstream", upstream=upstream)
    if "@" in upstream:  # the message shows the URL without its credential
        assert "secret" not in str(error)
        assert "user" not in str(error)
        assert repr("http://…@127.0.0.1:8080") in str(error)
    else:
        assert repr(upstream) in str(error)


@pytest.mark.parametrize(
    ("upstream", "host", "port"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1", 8080),
        ("http://127.0.0.1:8080/", "127.0.0.1", 8080),
        ("http://model", "model", 80),
        ("http://[::1]:9000", "::1", 9000),
        ("HTTP://Model.Local:81", "model.local", 81),
    ],
)
def test_good_upstream_urls(upstream: str, host: str, port: int) -> None:
    s = settings(upstream=upstream)
    assert (s.upstream_host, s.upstream_port) == (host, port)


@pytest.mark.parametrize("name", SECONDS)
@pytest.mark.parametrize("value", [-1.0, -0.001, math.nan])
def test_negative_durations_are_rejected(name: str, value: float) -> None:
    config_error(name, **{name: value})


@pytest.mark.parametrize("name", SECONDS)
def test_durations_must_be_numbers(name: str) -> None:
    config_error(name, **{name: "5"})


@pytest.mark.parametrize("name", POSITIVE_S)
def test_zero_is_rejected_where_it_would_mean_no_deadline(name: str) -> None:
    error = config_error(name, **{name: 0})
    assert "> 0" in str(error)


@pytest.mark.parametrize("name", ["drain_delay_s", "drain_timeout_s"])
def test_zero_drain_times_mean_no_waiting(name: str) -> None:
    assert getattr(settings(**{name: 0.0}), name) == 0.0


@pytest.mark.parametrize("name", AT_LEAST_ONE)
def test_limits_must_be_at_least_one(name: str) -> None:
    config_error(name, **{name: 0})
    assert getattr(settings(**{name: 1}), name) == 1


def test_pool_max_idle_may_be_zero_but_not_negative() -> None:
    assert settings(pool_max_idle=0).pool_max_idle == 0
    config_error("pool_max_idle", pool_max_idle=-1)


@pytest.mark.parametrize("name", ["port", "admin_port"])
@pytest.mark.parametrize("value", [-1, 65536, 100000])
def test_ports_must_be_in_range(name: str, value: int) -> None:
    config_error(name, **{name: value})


@pytest.mark.parametrize(
    ("host", "admin_host"),
    [("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "127.0.0.1"), ("10.0.0.5", "::"), ("::", "::1")],
)
def test_the_proxy_and_the_admin_port_cannot_share_a_port(host: str, admin_host: str) -> None:
    error = config_error("admin_port", host=host, admin_host=admin_host, port=9464, admin_port=9464)
    assert "port and admin_port are both 9464" in str(error)


def test_one_port_number_on_two_distinct_addresses_or_both_ephemeral_is_fine() -> None:
    assert settings(host="127.0.0.1", admin_host="127.0.0.2", port=9000, admin_port=9000).port == 9000
    assert settings(port=0, admin_port=0).admin_port == 0


@pytest.mark.parametrize(
    "cidrs", [("10.0.0.0/33",), ("not-a-network",), ("",), ("10.0.0.0/8", "300.1.2.3"), ("::1/129",)]
)
def test_bad_trusted_proxies_are_rejected(cidrs: tuple[str, ...]) -> None:
    config_error("trusted_proxies", trusted_proxies=cidrs)


def test_good_trusted_proxies() -> None:
    cidrs = ("10.0.0.0/8", "192.168.1.7", "fd00::/8", "10.0.0.1/8")
    assert settings(trusted_proxies=cidrs).trusted_proxies == cidrs


def test_log_level_must_be_a_level_name() -> None:
    config_error("log_level", log_level="verbose")


# ---- resolve(): precedence ------------------------------------------------------------------------


# One field per conversion: the flag value, the variable's text and its value, the file's TOML.
PRECEDENCE = [
    ("port", 1111, "2222", 2222, "3333", 3333),
    ("connect_timeout_s", 0.25, "0.5", 0.5, "0.75", 0.75),
    ("trusted_proxies", ("10.0.0.0/8",), "10.1.0.0/16, 10.2.0.0/16", ("10.1.0.0/16", "10.2.0.0/16"),
     '["10.3.0.0/16"]', ("10.3.0.0/16",)),
    ("via", False, "true", True, "false", False),
    ("log_level", "debug", "warning", "warning", '"error"', "error"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "flag", "env_text", "env_value", "toml", "file_value"),
    PRECEDENCE,
    ids=[p[0] for p in PRECEDENCE],
)
def test_flags_win_over_variables_over_the_file_over_defaults(
    tmp_path: Path, name: str, flag: Any, env_text: str, env_value: Any, toml: str, file_value: Any
) -> None:
    path = write(tmp_path, f'[sidecar]\nupstream = "{UPSTREAM}"\n{name} = {toml}\n')
    environ = {env_name(name): env_text}
    default = getattr(settings(), name)

    assert getattr(resolve_with({name: flag}, config_file=path, environ=environ)[0], name) == flag
    assert getattr(resolve_with(config_file=path, environ=environ)[0], name) == env_value
    assert getattr(resolve_with(config_file=path)[0], name) == file_value
    assert getattr(resolve_with({"upstream": UPSTREAM})[0], name) == default
    # An empty variable counts as unset.
    assert getattr(resolve_with(config_file=path, environ={env_name(name): "  "})[0], name) == file_value


def test_upstream_from_each_source(tmp_path: Path) -> None:
    path = write(tmp_path, '[sidecar]\nupstream = "http://127.0.0.1:3"\n')
    environ = {"MODELTAP_UPSTREAM": "http://127.0.0.1:2"}
    assert (
        resolve_with({"upstream": "http://127.0.0.1:1"}, config_file=path, environ=environ)[0].upstream_port
        == 1
    )
    assert resolve_with(config_file=path, environ=environ)[0].upstream_port == 2
    assert resolve_with(config_file=path)[0].upstream_port == 3


def test_the_file_can_come_from_modeltap_config(tmp_path: Path) -> None:
    path = write(tmp_path, f'[sidecar]\nupstream = "{UPSTREAM}"\nmax_inflight = 7\n')
    s, _ = resolve_with(environ={"MODELTAP_CONFIG": path})
    assert s.max_inflight == 7
    # An explicit --config wins over the variable.
    other = write(tmp_path, f'[sidecar]\nupstream = "{UPSTREAM}"\nmax_inflight = 9\n', "other.toml")
    assert resolve_with(config_file=other, environ={"MODELTAP_CONFIG": path})[0].max_inflight == 9


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("MODELTAP_PORT", "eighty"),
        ("MODELTAP_PORT", "70000"),
        ("MODELTAP_CONNECT_TIMEOUT_S", "-1"),
        ("MODELTAP_CONNECT_TIMEOUT_S", "soon"),
        ("MODELTAP_RESPONSE_TIMEOUT_S", "0"),
        ("MODELTAP_VIA", "maybe"),
        ("MODELTAP_MAX_INFLIGHT", "1.5"),
        ("MODELTAP_TRUSTED_PROXIES", "10.0.0.0/8,bogus"),
        ("MODELTAP_UPSTREAM", "https://127.0.0.1:8443"),
        ("MODELTAP_LOG_LEVEL", "loud"),
    ],
)
def test_a_bad_variable_is_named_with_its_value(variable: str, text: str) -> None:
    flags = {} if variable == "MODELTAP_UPSTREAM" else {"upstream": UPSTREAM}
    with pytest.raises(ConfigError) as info:
        resolve_with(flags, environ={variable: text})
    message = str(info.value)
    assert variable in message
    assert text in message
    assert info.value.setting == variable.removeprefix("MODELTAP_").lower()


def test_a_bad_flag_is_not_blamed_on_a_good_variable() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_with(
            {"upstream": UPSTREAM, "connect_timeout_s": -1.0}, environ={"MODELTAP_CONNECT_TIMEOUT_S": "2"}
        )
    assert "MODELTAP_CONNECT_TIMEOUT_S" not in str(info.value)
    assert "connect_timeout_s" in str(info.value)


# ---- resolve(): the file --------------------------------------------------------------------------


def test_errors_never_repeat_a_credential_from_the_environment_or_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve({}, {}, environ={"MODELTAP_UPSTREAM": "http://bob:hunter2@model:8000"})
    assert "hunter2" not in str(info.value)
    assert "bob" not in str(info.value)
    assert "MODELTAP_UPSTREAM" in str(info.value)

    path = write(tmp_path, '[monitoring]\nalert_webhooks = "https://hooks.example/services/T0/XXSECRETXX"\n')
    with pytest.raises(ConfigError) as info:
        resolve_with({"upstream": UPSTREAM}, config_file=path)
    assert "alert_webhooks must be tuple" in str(info.value)
    assert "XXSECRETXX" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[proxy]\nport = 1\n", "unknown table"),
        ('[sidecar]\nupstream = "http://127.0.0.1:1"\n[export]\nendpoint = "x"\n', "unknown table"),
        ("port = 1\n", "unknown table"),
        ("[sidecar]\nprot = 1\n", "unknown [sidecar] setting 'prot'"),
        ('[sidecar]\nmodel_name = "m"\n', "unknown [sidecar] setting 'model_name'"),
        ('[monitoring]\nmodle_name = "m"\n', "unknown [monitoring] setting 'modle_name'"),
        ('[monitoring]\nexport = "x"\n', "unknown [monitoring] setting 'export'"),
        ('[monitoring]\nupstream = "http://127.0.0.1:1"\n', "unknown [monitoring] setting 'upstream'"),
        ("sidecar = 3\n", "sidecar must be a table"),
        ('monitoring = ["a"]\n', "monitoring must be a table"),
        ('[sidecar]\nport = "eighty"\n', "port must be int"),
        ('[sidecar]\nvia = "sometimes"\n', "via must be bool"),
        ('[monitoring]\nmax_body_bytes = "1 MiB"\n', "max_body_bytes must be int"),
        ('[monitoring]\ncapture_payloads = "yes"\n', "capture_payloads must be bool"),
        ('[monitoring]\ncapture_request_headers = "a,b"\n', "capture_request_headers must be tuple"),
        ('[monitoring]\nprotocol_routes = ["/v2/"]\n', "protocol_routes must be Mapping"),
    ],
)
def test_file_errors_name_the_file_and_the_problem(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        resolve_with({"upstream": UPSTREAM}, config_file=path)
    message = str(info.value)
    assert path in message
    assert fragment in message


@pytest.mark.parametrize(
    "text",
    [
        "[sidecar\nport = 1\n",
        "[sidecar]\nport = \n",
        "[sidecar]\nport = 1\nport = 2\n",
        "[sidecar]\nvia = yes\n",
    ],
)
def test_invalid_toml_is_rejected_with_a_clear_message(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        resolve_with({"upstream": UPSTREAM}, config_file=path)
    message = str(info.value)
    assert f"config file {path} is not valid TOML" in message
    assert "line" in message  # where, from the TOML parser
    assert info.value.setting == "config"


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read the config file") as info:
        resolve_with({"upstream": UPSTREAM}, config_file=missing)
    assert missing in str(info.value)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        resolve_with({"upstream": UPSTREAM}, config_file=str(tmp_path))  # a directory


def test_a_bad_file_value_is_named_by_its_setting(tmp_path: Path) -> None:
    path = write(tmp_path, f'[sidecar]\nupstream = "{UPSTREAM}"\nheader_timeout_s = -2\n')
    with pytest.raises(ConfigError) as info:
        resolve_with(config_file=path)
    assert info.value.setting == "header_timeout_s"
    assert "header_timeout_s" in str(info.value)
    assert "MODELTAP_" not in str(info.value)


# ---- resolve(): monitoring --------------------------------------------------------------------------

MONITORING_FILE = """
[sidecar]
upstream = "http://127.0.0.1:8080"

[monitoring]
model_name = "from-file"
model_version = "7"
psi_warning = 0.05
min_samples = 50
capture_payloads = true
capture_request_headers = ["user-agent", "x-tenant"]
capture_response_headers = ["content-type"]
views_allow = ["10.0.0.0/8"]
protocol_routes = {"/v2/" = "oip_v2"}
"""


def test_monitoring_settings_come_from_the_file(tmp_path: Path) -> None:
    _, monitoring = resolve_with(config_file=write(tmp_path, MONITORING_FILE))
    assert monitoring.model_name == "from-file"
    assert monitoring.model_version == "7"
    assert monitoring.psi_warning == 0.05
    assert monitoring.min_samples == 50
    assert monitoring.capture_payloads is True
    assert monitoring.capture_request_headers == ("user-agent", "x-tenant")
    assert monitoring.capture_response_headers == ("content-type",)
    assert monitoring.views_allow == ("10.0.0.0/8",)
    assert dict(monitoring.protocol_routes) == {"/v2/": "oip_v2"}


def test_a_monitoring_variable_wins_over_the_file(tmp_path: Path) -> None:
    environ = {
        "MODELTAP_MODEL_NAME": "from-env",
        "MODELTAP_MIN_SAMPLES": "80",
        "MODELTAP_CAPTURE_RESPONSE_HEADERS": "x-model",
        "MODELTAP_CAPTURE_PAYLOADS": " ",  # empty: unset, the file's value stands
    }
    _, monitoring = resolve_with(config_file=write(tmp_path, MONITORING_FILE), environ=environ)
    assert monitoring.model_name == "from-env"
    assert monitoring.min_samples == 80
    assert monitoring.capture_response_headers == ("x-model",)
    # Where the variable is unset, the file's value stands.
    assert monitoring.model_version == "7"
    assert monitoring.psi_warning == 0.05
    assert monitoring.capture_payloads is True


def test_monitoring_flags_win_over_variables_and_the_file(tmp_path: Path) -> None:
    _, monitoring = resolve_with(
        monitoring_flags={"model_name": "from-flag", "model_version": None, "reference": None},
        config_file=write(tmp_path, MONITORING_FILE),
        environ={"MODELTAP_MODEL_NAME": "from-env"},
    )
    assert monitoring.model_name == "from-flag"
    assert monitoring.model_version == "7"
    assert monitoring.reference is None


def test_otel_variables_configure_export() -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_SAMPLER": "always_on"}
    _, monitoring = resolve_with({"upstream": UPSTREAM}, environ=environ)
    assert monitoring.export.metrics_target == "http://127.0.0.1:4318/v1/metrics"
    assert monitoring.export.sampler.name == "always_on"


def test_a_bad_monitoring_variable_is_named_with_its_value() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_with({"upstream": UPSTREAM}, environ={"MODELTAP_MAX_BODY_BYTES": "lots"})
    assert "MODELTAP_MAX_BODY_BYTES" in str(info.value)
    assert "lots" in str(info.value)


@pytest.mark.parametrize(
    ("environ", "toml"),
    [
        ({}, ""),
        ({"MODELTAP_VIEWS_PREFIX": "/modeltap"}, ""),
        ({}, '[monitoring]\nviews_prefix = "/modeltap"\n'),
        ({"MODELTAP_VIEWS_PREFIX": "/views"}, '[monitoring]\nviews_prefix = "/modeltap"\n'),
    ],
)
def test_the_proxy_port_never_serves_the_views(tmp_path: Path, environ: dict[str, str], toml: str) -> None:
    """The proxy port is the model's: every path on it goes upstream (views are on the admin port)."""
    path = write(tmp_path, f'[sidecar]\nupstream = "{UPSTREAM}"\n{toml}')
    _, monitoring = resolve_with(config_file=path, environ=environ)
    assert monitoring.views_prefix is None


def test_resolved_settings_equal_direct_construction() -> None:
    s, _ = resolve_with({"upstream": UPSTREAM, "port": 0, "via": True})
    assert s == dataclasses.replace(settings(), port=0, via=True)
