"""The sidecar's settings: command-line flags, `MODELTAP_*` variables and a TOML file are views of
one `SidecarSettings` (flags win over variables, variables over the file, the file over defaults).

Monitoring settings (model name, reference, thresholds, OTLP export) are `ModelTapConfig`'s and
follow its variables; in the file they go under `[monitoring]`, sidecar settings under `[sidecar]`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from modeltap.config import ModelTapConfig
from modeltap.errors import ConfigError
from modeltap.redaction import may_hold_a_secret, variable_shown, without_userinfo


@dataclass(frozen=True)
class SidecarSettings:
    """Everything the sidecar can be told besides monitoring, with production defaults
    (RELIABILITY.md, "Recommended defaults")."""

    upstream: str = ""
    host: str = "0.0.0.0"
    port: int = 8000
    admin_host: str = "127.0.0.1"
    admin_port: int = 9464
    connect_timeout_s: float = 5.0
    # Until the upstream's response headers arrive; after that only `idle_timeout_s` applies,
    # so long streams (SSE, LLM tokens) live.
    response_timeout_s: float = 60.0
    idle_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_request_body_bytes: int = 64 * 1024 * 1024
    max_inflight: int = 1024
    # Below the upstream's own keep-alive (uvicorn: 5 s), so a pooled connection is never stale.
    pool_keepalive_s: float = 4.0
    pool_max_idle: int = 256
    keepalive_timeout_s: float = 5.0  # idle client connections
    # SIGTERM: readiness fails at once, requests are still served for `drain_delay_s` (endpoint
    # removal propagates), then in-flight ones get `drain_timeout_s`; then a bounded flush.
    drain_delay_s: float = 3.0
    drain_timeout_s: float = 20.0
    trusted_proxies: tuple[str, ...] = ()
    via: bool = False
    readiness_failures: int = 3  # consecutive failed upstream probes before /readyz fails
    probe_interval_s: float = 1.0
    log_level: str = "info"
    # Data-plane processes sharing the proxy port (SO_REUSEPORT), all feeding one monitor.
    workers: int = 1
    # The rollback switch (opt-in): the previous model version's server, where the operator
    # (admin POST /rollback) or, with auto_rollback "emergency", an EMERGENCY alert sends traffic.
    fallback_upstream: str = ""
    auto_rollback: str = "off"

    def __post_init__(self) -> None:
        if not self.upstream:
            raise ConfigError("an upstream is required (--upstream or MODELTAP_UPSTREAM)", "upstream")
        _check_upstream("upstream", self.upstream)
        if self.fallback_upstream:
            _check_upstream("fallback_upstream", self.fallback_upstream)
            if _address(self.fallback_upstream) == _address(self.upstream):
                raise ConfigError(
                    f"fallback_upstream must be another server than upstream, got {self.fallback_upstream!r}",
                    "fallback_upstream",
                )
        if self.auto_rollback not in ("off", "emergency"):
            raise ConfigError(
                f"auto_rollback must be off or emergency, got {self.auto_rollback!r}", "auto_rollback"
            )
        if self.auto_rollback != "off" and not self.fallback_upstream:
            raise ConfigError(
                "auto_rollback needs a fallback_upstream (--fallback-upstream) to roll back to",
                "auto_rollback",
            )
        for name in ("port", "admin_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ConfigError(f"{name} must be within 0..65535, got {value!r}", name)
        if self.port == self.admin_port != 0 and _may_overlap(self.host, self.admin_host):
            # Binding would fail with "address in use", which reads as another process's fault.
            raise ConfigError(
                f"port and admin_port are both {self.port} (on {self.host} and {self.admin_host}): "
                "the proxy and the admin port need different ports (--port, --admin-port)",
                "admin_port",
            )
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_s") and not (isinstance(value, (int, float)) and value >= 0):
                raise ConfigError(f"{field.name} must be a number >= 0, got {value!r}", field.name)
        for name in (
            "connect_timeout_s",
            "response_timeout_s",
            "header_timeout_s",
            "body_timeout_s",
            "probe_interval_s",  # 0 would probe the upstream in a busy loop
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}", name)
        for name in (
            "max_url_bytes",
            "max_header_bytes",
            "max_headers",
            "max_request_body_bytes",
            "max_inflight",
            "readiness_failures",
            "workers",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}", name)
        if self.pool_max_idle < 0:
            raise ConfigError(f"pool_max_idle must be >= 0, got {self.pool_max_idle!r}", "pool_max_idle")
        for cidr in self.trusted_proxies:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(
                    f"trusted_proxies entries must be IP networks, got {cidr!r}", "trusted_proxies"
                ) from None
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            raise ConfigError(f"log_level must be a logging level name, got {self.log_level!r}", "log_level")

    @property
    def upstream_host(self) -> str:
        return urlsplit(self.upstream).hostname or ""

    @property
    def upstream_port(self) -> int:
        return urlsplit(self.upstream).port or 80

    @property
    def fallback_address(self) -> tuple[str, int] | None:
        return _address(self.fallback_upstream) if self.fallback_upstream else None


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 80


def _check_upstream(name: str, url: str) -> None:
    """An upstream is http://host:port and nothing else."""
    not_a_url = ConfigError(f"{name} must be an http://host:port URL, got {without_userinfo(url)!r}", name)
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket
        raise not_a_url from None
    if parts.scheme != "http" or not parts.hostname:
        raise not_a_url
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(
            f"{name} must be scheme://host:port only (no path, query or credentials), "
            f"got {without_userinfo(url)!r}",
            name,
        )
    try:
        port = parts.port  # raises on an invalid port
    except ValueError:
        port = 0
    if port == 0:  # 0 is no port to connect to (and would silently mean 80)
        raise ConfigError(f"{name} has an invalid port: {url!r}", name)


_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def _may_overlap(host: str, other: str) -> bool:
    """Whether two listen addresses can collide on one port: the same, or either is a wildcard."""
    return host == other or host in _WILDCARDS or other in _WILDCARDS


HELP: dict[str, str] = {
    "upstream": "the model server to forward to, http://host:port (required)",
    "host": "address the proxy listens on",
    "port": "port the proxy listens on",
    "admin_host": "address of the admin port (/healthz /readyz /status /metrics and the page)",
    "admin_port": "admin port",
    "connect_timeout_s": "upstream connect timeout -> 504 upstream_connect_timeout",
    "response_timeout_s": "deadline for the upstream's response headers -> 504 upstream_response_timeout",
    "idle_timeout_s": "longest silence from the upstream once the response started",
    "header_timeout_s": "time a client has to send its request head -> 408 (slowloris)",
    "body_timeout_s": "longest silence while a client sends its body -> 408",
    "max_url_bytes": "longest request target -> 414",
    "max_header_bytes": "largest request head -> 431",
    "max_headers": "most request header fields -> 431",
    "max_request_body_bytes": "largest request body -> 413 (checked before reading when the length is known)",
    "max_inflight": "requests in flight before answering 503 overloaded with Retry-After",
    "pool_keepalive_s": "idle upstream connections are dropped after this (below the upstream's keep-alive)",
    "pool_max_idle": "idle upstream connections kept",
    "keepalive_timeout_s": "idle client connections are closed after this",
    "drain_delay_s": "on SIGTERM, seconds to keep serving with readiness failed",
    "drain_timeout_s": "then, seconds in-flight requests get before they are aborted",
    "trusted_proxies": "comma-separated CIDRs whose X-Forwarded-Proto/-Host are kept",
    "via": "add a Via header in both directions",
    "readiness_failures": "consecutive failed upstream probes before /readyz fails",
    "probe_interval_s": "seconds between upstream reachability probes",
    "log_level": "critical, error, warning, info or debug",
    "workers": "data-plane processes sharing the proxy port (SO_REUSEPORT), one monitor for all",
    "fallback_upstream": "the previous model version's server, http://host:port: admin POST /rollback "
    "sends new requests there until POST /rollback/cancel",
    "auto_rollback": "off, or emergency: an EMERGENCY alert rolls back to fallback_upstream by itself",
}

FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(SidecarSettings)}
MONITORING_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelTapConfig)) - {"export"}


def env_name(field: str) -> str:
    return "MODELTAP_" + field.upper()


def _convert(name: str, raw: Any, source: str) -> Any:
    """A value from a variable (text) or the file (TOML types) into the field's type."""
    kind = FIELDS[name].type
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if kind == "float":
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if kind == "tuple[str, ...]":
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return tuple(str(item).strip() for item in items if str(item).strip())
        return str(raw).strip()
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} must be {kind}, got {raw!r}", name) from None


def read_config_file(path: str) -> dict[str, Any]:
    """The `[sidecar]` and `[monitoring]` tables of a TOML file."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}", "config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}", "config") from None
    unknown_tables = set(document) - {"sidecar", "monitoring"}
    if unknown_tables:
        raise ConfigError(
            f"config file {path}: unknown table(s) {sorted(unknown_tables)}; use [sidecar] and [monitoring]",
            "config",
        )
    sidecar = document.get("sidecar", {})
    monitoring = document.get("monitoring", {})
    for table, value in (("sidecar", sidecar), ("monitoring", monitoring)):
        if not isinstance(value, dict):
            raise ConfigError(f"config file {path}: {table} must be a table ([{table}])", "config")
    for key in sidecar:
        if key not in FIELDS:
            raise ConfigError(f"config file {path}: unknown [sidecar] setting {key!r}", key)
    for key, value in monitoring.items():
        if key not in MONITORING_FIELDS:
            raise ConfigError(f"config file {path}: unknown [monitoring] setting {key!r}", key)
        monitoring[key] = _monitoring_value(key, value, path)
    return {"sidecar": sidecar, "monitoring": monitoring}


_MONITORING_KINDS = {f.name: str(f.type).removesuffix(" | None") for f in dataclasses.fields(ModelTapConfig)}


def _monitoring_value(name: str, value: Any, path: str) -> Any:
    """A `[monitoring]` value checked against its `ModelTapConfig` field (TOML has types)."""
    kind = _MONITORING_KINDS[name]
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "tuple[str, ...]":
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
        value = tuple(value) if ok else value
    elif kind == "tuple[float, ...]":
        ok = isinstance(value, list) and all(
            isinstance(item, (int, float)) and not isinstance(item, bool) for item in value
        )
        value = tuple(float(item) for item in value) if ok else value
    elif kind == "Mapping[str, str]":
        ok = isinstance(value, dict) and all(isinstance(item, str) for item in value.values())
    else:
        ok = True  # checked by ModelTapConfig itself
    if not ok:
        got = "" if may_hold_a_secret(name) else f", got {value!r}"
        raise ConfigError(f"config file {path}: [monitoring] {name} must be {kind}{got}", name)
    return value


def resolve(
    flags: Mapping[str, Any],
    monitoring_flags: Mapping[str, Any],
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[SidecarSettings, ModelTapConfig]:
    """Settings from flags (not None = given), variables, the file, then defaults."""
    env = os.environ if environ is None else environ
    path = config_file or env.get("MODELTAP_CONFIG", "").strip() or None
    file = read_config_file(path) if path else {"sidecar": {}, "monitoring": {}}
    values: dict[str, Any] = {}
    for name in FIELDS:
        if flags.get(name) is not None:
            values[name] = flags[name]
        elif raw := env.get(env_name(name), "").strip():
            values[name] = _convert(name, raw, env_name(name))
        elif name in file["sidecar"]:
            values[name] = _convert(name, file["sidecar"][name], f"config file {path}")
    try:
        settings = SidecarSettings(**values)
    except ConfigError as exc:
        var = env_name(exc.setting or "")
        if exc.setting and flags.get(exc.setting) is None and env.get(var, "").strip():
            raise ConfigError(f"{variable_shown(var, env[var])} is invalid: {exc}", exc.setting) from None
        raise
    # Monitoring: a file value counts only where its variable is unset; flags win over both.
    overrides = {
        name: value for name, value in file["monitoring"].items() if not env.get(env_name(name), "").strip()
    }
    overrides.update({k: v for k, v in monitoring_flags.items() if v is not None})
    # The sidecar's port is the model's: nothing of it is intercepted (views are on the admin port).
    overrides["views_prefix"] = None
    monitoring = ModelTapConfig.from_env(env, **overrides)
    return settings, monitoring
