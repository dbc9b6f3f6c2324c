"""The worker's micro-batch: decode each record, group, then feed the statistics with numpy.

Per record only the unavoidable happens (header look-ups, one orjson parse per body, a group
key); converting rows to floats, bucketing latencies and summarising features run once per
group with numpy. This is what keeps the whole pipeline within a few microseconds per exchange.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from itertools import chain
from typing import Any

import numpy as np
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan

from modeltap.config import ModelTapConfig
from modeltap.export.spans import KNOWN_METHODS, ExchangeIdentity, SpanOptions, build_span
from modeltap.protocols import DecodedPayload, ExchangeBytes, decode_exchange
from modeltap.protocols.detect import sanitize
from modeltap.protocols.tabular import rows_to_columns
from modeltap.records import ExchangeRecord
from modeltap.snapshot import Attributes
from modeltap.stats import StatsAggregator
from modeltap.stats.reference import ReferenceProfile

_log = logging.getLogger("modeltap")
UNKNOWN = "unknown"
_EMPTY: dict[bytes, bytes] = {}


def _header_map(headers: Any, wanted: frozenset[bytes]) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for key, value in headers:
        if key in wanted and key not in found:
            found[key] = value
    return found


def _text(value: bytes | None) -> str:
    return value.decode("latin-1") if value else ""


class BatchPipeline:
    """Turns a list of `ExchangeRecord`s into statistics updates and finished spans.

    Example::

        pipeline = BatchPipeline(config, reference, stats, span_options, lambda: resource)
        spans = pipeline.process(queue.drain(4096))
    """

    def __init__(
        self,
        config: ModelTapConfig,
        reference: ReferenceProfile | None,
        stats: StatsAggregator,
        span_options: SpanOptions,
        resource: Callable[[], Resource],
        default_model_name: str,
    ) -> None:
        self._config = config
        self._reference = reference
        self._stats = stats
        self._span_options = span_options
        self._resource = resource
        self._default_model = default_model_name
        self._feature_names = reference.input_names if reference is not None else ()
        # Header names arrive lower-cased from ASGI servers (the spec requires it).
        self._version_header = config.version_header.lower().encode()
        self._request_id_header = config.request_id_header.lower().encode()
        self._request_wanted = frozenset({b"content-encoding", self._request_id_header})
        self._response_wanted = frozenset(
            {b"content-encoding", self._version_header, b"ce-modelid", b"ce-id"}
        )
        self.errors: Counter[str] = Counter()

    def process(self, records: list[ExchangeRecord]) -> list[ReadableSpan]:
        latency: dict[tuple[Any, ...], list[float]] = {}
        failed: Counter[tuple[Any, ...]] = Counter()
        inputs: dict[tuple[Attributes, tuple[str, ...], int], list[list[Any]]] = {}
        outputs: dict[tuple[Attributes, int], list[list[Any]]] = {}
        spans: list[ReadableSpan] = []
        stats = self._stats
        for record in records:
            try:
                decoded = self._decode(record)
                model: Attributes = (
                    (
                        "modeltap.model.name",
                        self._config.model_name or decoded.model_name or self._default_model,
                    ),
                    (
                        "modeltap.model.version",
                        self._config.model_version or decoded.model_version or UNKNOWN,
                    ),
                )
                weight = record.weight
                scope = record.scope
                error = record.error_type
                status = record.status or (500 if error is not None else 0)
                if error is None and status >= 500:
                    error = str(status)
                key = (
                    model,
                    weight,
                    scope.get("method", "GET"),
                    record.route_template(),
                    status,
                    scope.get("scheme", "http"),
                    scope.get("http_version", "1.1"),
                    error,
                )
                latency.setdefault(key, []).append(record.duration_s)
                if error is not None:
                    failed[key] += 1
                if decoded.matrix_rows is not None:
                    inputs.setdefault((model, decoded.matrix_names, weight), []).append(decoded.matrix_rows)
                elif decoded.features:
                    stats.observe_columns(model, "input", decoded.features, weight)
                if decoded.output_values is not None:
                    outputs.setdefault((model, weight), []).append(decoded.output_values)
                elif decoded.outputs:
                    stats.observe_columns(model, "output", decoded.outputs, weight)
                for reason, count in decoded.violations.items():
                    stats.count_violation(model, reason, count * weight)
                if decoded.skipped:
                    stats.count_drop(model, decoded.skipped, weight)
                if record.trace is not None:
                    spans.append(self._span(record, decoded, model))
            except Exception:
                self.errors["process"] += 1
                _log.debug("processing an exchange failed", exc_info=True)
        for key, durations in latency.items():
            stats.observe_latency(
                key[0], self._http_attributes(key), np.asarray(durations), key[1], failed[key]
            )
        for (model, names, weight), parts in inputs.items():
            self._observe_rows(model, "input", names, parts, weight)
        for (model, weight), parts in outputs.items():
            self._observe_rows(model, "output", ("prediction",), [[[v] for v in p] for p in parts], weight)
        return spans

    @staticmethod
    def _http_attributes(key: tuple[Any, ...]) -> Attributes:
        _model, _weight, method, route, status, scheme, version, error = key
        attrs: list[tuple[str, str | int]] = [
            ("http.request.method", method if method in KNOWN_METHODS else "_OTHER"),
        ]
        # Only a template is a route: raw paths would make one series per URL.
        if route:
            attrs.append(("http.route", route))
        if status:
            attrs.append(("http.response.status_code", status))
        attrs.append(("url.scheme", scheme))
        attrs.append(("network.protocol.version", version))
        if error is not None:
            attrs.append(("error.type", error))
        return tuple(attrs)

    def _observe_rows(
        self, model: Attributes, role: str, names: tuple[str, ...], parts: list[list[Any]], weight: int
    ) -> None:
        rows = list(chain.from_iterable(parts))
        try:
            matrix = np.array(rows, dtype=np.float64)
            if matrix.ndim != 2 or matrix.shape[1] != len(names):
                raise ValueError("ragged")
        except (ValueError, TypeError):
            # Strings, nested values or ragged rows: the general per-exchange path counts them.
            for part in parts:
                violations: dict[str, int] = {}
                columns, _ = rows_to_columns(part, names if role == "input" else (), violations)
                if role == "output" and list(columns) == ["f0"]:
                    columns = {"prediction": columns["f0"]}
                self._stats.observe_columns(model, role, columns, weight)
                for reason, count in violations.items():
                    self._stats.count_violation(model, reason, count * weight)
            return
        self._stats.observe_matrix(model, role, names, matrix, weight, exchanges=len(parts))

    def _decode(self, record: ExchangeRecord) -> DecodedPayload:
        if not record.request_parts and not record.response_parts:
            return DecodedPayload()
        if record.request_truncated or record.response_truncated:
            return DecodedPayload(skipped="body_over_cap")
        scope = record.scope
        request = _header_map(scope.get("headers") or (), self._request_wanted)
        response = (
            _header_map(record.response_headers, self._response_wanted) if record.response_headers else _EMPTY
        )
        exchange = ExchangeBytes(
            method=scope.get("method", "GET"),
            path=scope.get("path", ""),
            request_body=b"".join(record.request_parts),
            response_body=b"".join(record.response_parts),
            status=record.status,
            request_content_encoding=_text(request.get(b"content-encoding")),
            response_content_encoding=_text(response.get(b"content-encoding")),
            feature_names=self._feature_names,
        )
        decoded = decode_exchange(exchange, max_decoded_bytes=4 * self._config.max_body_bytes + 1024)
        if response:
            if header_version := response.get(self._version_header):
                decoded.model_version = sanitize(_text(header_version)) or decoded.model_version
            if not decoded.model_name and (model_id := response.get(b"ce-modelid")):
                decoded.model_name = sanitize(_text(model_id))
        request_id = request.get(self._request_id_header) or response.get(b"ce-id")
        if request_id and not decoded.request_id:
            decoded.request_id = sanitize(_text(request_id))
        return decoded

    def _span(self, record: ExchangeRecord, decoded: DecodedPayload, model: Attributes) -> ReadableSpan:
        identity = ExchangeIdentity(
            route=record.route_template(),
            model_name=str(model[0][1]),
            model_version=str(model[1][1]),
            request_id=decoded.request_id,
            protocol=decoded.protocol,
            violations=decoded.violations,
        )
        return build_span(record, identity, self._span_options, self._resource())
