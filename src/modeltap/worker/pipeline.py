"""The worker's micro-batch: decode each record, group, then feed the statistics with numpy.

Per record only the unavoidable happens (header look-ups, one orjson parse per body, a group
key); converting rows to floats, bucketing latencies and summarising features run once per
group with numpy. This is what keeps the whole pipeline within a few microseconds per exchange.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from itertools import chain
from types import MappingProxyType
from typing import Any

import numpy as np
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan

from modeltap.capture.routes import RouteTemplates
from modeltap.config import ModelTapConfig
from modeltap.errors import ConfigError
from modeltap.export.span_wire import SpanWireEncoder
from modeltap.export.spans import KNOWN_METHODS, ExchangeIdentity, SpanOptions, build_span, request_shape
from modeltap.protocols import DecodedPayload, ExchangeBytes, decode_exchange
from modeltap.protocols.detect import DecodeOptions, path_identity, sanitize
from modeltap.protocols.feedback import MAX_ID_LENGTH
from modeltap.protocols.mapping import FieldMapping
from modeltap.protocols.routes import protocol_route
from modeltap.protocols.tabular import rows_to_columns
from modeltap.records import COLD_START_KEY, PROXY_ERROR_KEY, ExchangeRecord, RawRecord, TimedGroup
from modeltap.reference.document import ReferenceProfile
from modeltap.snapshot import Attributes
from modeltap.stats import StatsAggregator
from modeltap.stats.business import BusinessOutcomes
from modeltap.stats.freshness import event_seconds
from modeltap.stats.ground_truth import GroundTruth
from modeltap.worker.feedback import join_key

_log = logging.getLogger("modeltap")
UNKNOWN = "unknown"
# The numpy step runs once this many records are grouped, or once the oldest is this old. Its
# cost is mostly fixed per group and call (about 0.3 ms with a reference loaded), so fewer, larger
# steps cost less per record; in the serving process (inline mode) a step holds the interpreter
# while requests wait, so there it stays short.
FLUSH_RECORDS = 256
FLUSH_AGE_S = 0.1
# In the monitor process nothing waits on a step but its own analysis: a step takes up to this
# many records (FLUSH_RECORDS of them with their payloads), or those of one snapshot interval
# (every snapshot steps first anyway).
MONITOR_FLUSH_RECORDS = 4096
# ... or once the decoded rows it holds are estimated above this share of the queue's byte bound.
FLUSH_BYTES_SHARE = 8
FLUSH_BYTES_MAX = 8 * 1024 * 1024
# Distinct shapes of timed-only records remembered (cleared when full: paths come from clients).
SHAPES_LIMIT = 256
# Estimated bytes of one parsed JSON number in a row list (a float object and its list slot).
_ROW_BYTES = 32
_LIST_BYTES = 64
# The cell types a decoded batch of rows may hold to be converted as one float matrix (a null is
# missing: NaN); any other (a boolean, a string) sends the batch the general way.
_MATRIX_CELLS = frozenset({float, int, type(None)})
# What a record without its payload says of its protocol and its violations (`_without_payload`).
_NO_PAYLOAD_PROTOCOL = DecodedPayload().protocol
_NO_VIOLATIONS: Mapping[str, int] = MappingProxyType({})


def _rows_bytes(rows: list[Any]) -> int:
    """Estimated memory of parsed row lists (Python objects, several times the JSON text)."""
    width = len(rows[0]) if rows and isinstance(rows[0], list) else 1
    return len(rows) * (width * _ROW_BYTES + _LIST_BYTES)


def _stream_timings(decoded: DecodedPayload, first_byte_s: float, streaming_s: float, total_s: float) -> None:
    """Latency measures of generative responses as outputs: time to first token (first body
    byte), whole response duration, and completion tokens per second of streaming."""
    if decoded.rows != 1:
        return
    decoded.outputs["time_to_first_token_s"] = [first_byte_s]
    decoded.outputs["response_duration_s"] = [total_s]
    tokens = decoded.outputs.get("completion_tokens", [None])[0]
    chunks = decoded.outputs.get("stream_chunks", [None])[0]
    # Only a stream has a generation rate to observe: a one-piece body is written in microseconds.
    streamed = isinstance(chunks, float) and chunks > 0
    rate = float(tokens) / streaming_s if streamed and isinstance(tokens, float) and streaming_s > 0 else None
    decoded.outputs["tokens_per_second"] = [rate]


class BatchPipeline:
    """Turns a micro-batch of raw records into statistics updates and finished spans.

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
        *,
        flush_records: int = FLUSH_RECORDS,
        flush_age_s: float = FLUSH_AGE_S,
    ) -> None:
        self._config = config
        self._flush_records = flush_records
        self._flush_age_s = flush_age_s
        self._freshness_key = config.freshness_key
        self._reference = reference
        self._stats = stats
        self._span_options = span_options
        self._resource = resource
        self._default_model = default_model_name
        self._feature_names = reference.input_names if reference is not None else ()
        mapping = None
        if config.payload_mapping:
            try:
                mapping = FieldMapping.parse(config.payload_mapping)
            except ValueError as exc:  # a configuration error: raised at start-up, never later
                raise ConfigError(str(exc), "payload_mapping") from None
        self._decode_options = DecodeOptions(routes=dict(config.protocol_routes), mapping=mapping)
        # Header names arrive lower-cased from ASGI servers (the spec requires it).
        self._version_header = config.version_header.lower().encode()
        self._request_id_header = config.request_id_header.lower().encode()
        self._request_wanted = frozenset({b"content-encoding", self._request_id_header})
        self._response_wanted = frozenset(
            {b"content-encoding", self._version_header, b"ce-modelid", b"ce-id"}
        )
        self.errors: Counter[str] = Counter()
        # Ground truth (set by the analyzer when the reference has something to judge): each
        # answered row's prediction waits there for its label.
        self.truth: GroundTruth | None = None
        # Business outcomes (set by the analyzer): each answered row is an exposure outcomes join.
        self.business: BusinessOutcomes | None = None
        self._label_key = config.label_key
        self._wire = SpanWireEncoder(span_options)
        self._route_templates = RouteTemplates()
        # What a timed-only record files under, by the fields that decide it (see `process`).
        self._shapes: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        # True when spans go to the application's own TracerProvider (which needs SDK spans).
        self.sdk_spans = False
        # False where spans are built elsewhere (the serving process, for the app's own provider).
        self.build_spans = True
        # False: a traced record without its payload is worked out in full, as one with its
        # payload is (tests hold the two ways to the same statistics and span bytes).
        self.spans_by_shape = True
        # Grouped values waiting for their numpy step. The numpy work has a fixed cost per call
        # (about 0.5 ms per micro-batch with a reference loaded), so it runs once enough rows
        # have gathered, not once per wake-up: at a few thousand requests/s the worker wakes with
        # ~20 records, where the per-record cost was 3x that of a full batch (bench/README.md).
        self._latency: dict[tuple[Any, ...], list[float]] = {}
        self._failed: Counter[tuple[Any, ...]] = Counter()
        self._gone: Counter[tuple[Any, ...]] = Counter()
        self._inputs: dict[tuple[Attributes, tuple[str, ...], int, bool], list[list[Any]]] = {}
        self._outputs: dict[tuple[Attributes, int, bool], list[list[Any]]] = {}
        self._pending = 0
        self._pending_payloads = 0  # of which with their payload (decoded rows, outputs)
        self._pending_since = 0.0
        # Estimated bytes of the decoded rows waiting for the numpy step (see RecordQueue).
        self.pending_bytes = 0
        self._flush_bytes = min(FLUSH_BYTES_MAX, config.queue_max_bytes // FLUSH_BYTES_SHARE)

    def process(self, raw_records: list[RawRecord]) -> list[Any]:
        """One micro-batch. Hot loop: unpack, decode, group; the numpy work per group happens in
        `flush_pending`, once `flush_records` records (FLUSH_RECORDS with their payloads) or
        `flush_age_s` seconds have gathered, or once the decoded rows waiting for it exceed their
        share of the memory bound."""
        latency = self._latency
        failed = self._failed
        gone = self._gone
        inputs = self._inputs
        outputs = self._outputs
        if not self._pending:
            self._pending_since = time.monotonic()
        spans: list[Any] = []
        stats = self._stats
        # A traced record without its payload is filed as the untraced ones are, and its span's
        # repeating part is looked up by what files it (`_timed_span`), unless spans go to the
        # app's SDK provider or carry bodies.
        spans_by_shape = (
            self.spans_by_shape and not self.sdk_spans and not self._span_options.capture_payloads
        )
        fixed_name = self._config.model_name
        default_model = self._default_model
        routes = self._route_templates
        for raw in raw_records:
            self._pending += 1
            try:
                (scope, root_path_at_start, start_ns, started, _first, ended, finished, status,
                 response_headers, request_parts, request_size, response_parts, response_size,
                 exception_type, disconnected, trace, weight, payload_weight, first_body) = raw  # fmt: skip
                if not payload_weight and (trace is None or not self.build_spans or spans_by_shape):
                    # Timed and counted only (the payload was sampled out): under sustained load
                    # nearly every record; traced, its span is made from what files it.
                    key, error, client_gone, shape = self._file_timed_record(
                        scope, root_path_at_start, status, response_headers, exception_type,
                        disconnected, ended, weight, 1,
                    )  # fmt: skip
                    decoded = None
                    if trace is not None and self.build_spans:
                        spans.append(self._timed_span(raw, key, shape))
                elif payload_weight:
                    self._pending_payloads += 1
                    decoded = self._decode(
                        scope,
                        status,
                        response_headers,
                        request_parts,
                        request_size,
                        response_parts,
                        response_size,
                    )
                else:
                    # Payload sampled out, traced: the span wants the request id too.
                    decoded = self._without_payload(scope, response_headers)
                if decoded is not None:
                    status, error, client_gone = _outcome(scope, status, exception_type, disconnected, ended)
                    # Only the model's 2xx answer vouches for the name and version it carries.
                    accepted = 200 <= status < 300
                    model = stats.identity(
                        fixed_name or decoded.model_name or default_model,
                        decoded.model_version,
                        accepted=accepted,
                    )
                    if accepted and decoded.answer_version:
                        stats.note_served(model, decoded.answer_version)
                    template = routes.of(scope, root_path_at_start)
                    if template is None:
                        template = _protocol_template(scope)
                    key = (
                        model,
                        weight,
                        scope.get("method", "GET"),
                        template,
                        status,
                        scope.get("scheme", "http"),
                        scope.get("http_version", "1.1"),
                        error,
                        bool(scope.get(COLD_START_KEY)),
                    )
                durations = latency.get(key)
                if durations is None:
                    durations = latency[key] = []
                durations.append((ended if ended is not None else finished) - started)
                if client_gone:
                    gone[key] += 1
                elif error is not None:
                    failed[key] += 1
                if decoded is None:
                    continue  # timed and counted: nothing more to take from it
                if decoded.protocol == "openai" and first_body is not None and ended is not None:
                    _stream_timings(decoded, first_body - started, ended - first_body, ended - started)
                if self._freshness_key is not None:
                    self._freshness(model, decoded, start_ns / 1e9, payload_weight)
                # Payload statistics count with the payload weight (bodies may be sampled).
                if decoded.matrix_rows is not None:
                    rows = decoded.matrix_rows
                    inputs.setdefault((model, decoded.matrix_names, payload_weight, accepted), []).append(
                        rows
                    )
                    self.pending_bytes += _rows_bytes(rows)
                elif decoded.features:
                    stats.observe_columns(model, "input", decoded.features, payload_weight, accepted)
                if decoded.output_values is not None and not decoded.outputs:
                    outputs.setdefault((model, payload_weight, accepted), []).append(decoded.output_values)
                    self.pending_bytes += _ROW_BYTES * len(decoded.output_values)
                elif decoded.outputs:
                    # Every output of the exchange in one call: the schema check counts the
                    # reference's outputs missing from the answer, so it must see them together.
                    columns = decoded.outputs
                    if decoded.output_values is not None:
                        flat, _ = rows_to_columns(
                            [[v] for v in decoded.output_values], (), decoded.violations
                        )
                        columns = {"prediction": flat.get("f0", []), **columns}
                    stats.observe_columns(model, "output", columns, payload_weight, accepted)
                if self.truth is not None and accepted and payload_weight:
                    self._keep_predictions(model, decoded)
                if self.business is not None and accepted and payload_weight and decoded.rows:
                    self._keep_exposures(model, decoded, payload_weight)
                if decoded.violations:
                    for reason, count in decoded.violations.items():
                        stats.count_violation(model, reason, count * payload_weight)
                if decoded.skipped:
                    stats.count_drop(model, decoded.skipped, payload_weight)
                if trace is not None and self.build_spans:
                    spans.append(self._span(ExchangeRecord._make(raw), decoded, model, template))
                if self.pending_bytes > self._flush_bytes:
                    self.flush_pending()  # decoded rows are held against the memory bound
                    latency, failed, gone = self._latency, self._failed, self._gone
                    inputs, outputs = self._inputs, self._outputs
                    self._pending_since = time.monotonic()
            except Exception:
                self.errors["process"] += 1
                _log.debug("processing an exchange failed", exc_info=True)
        self._step_when_due()
        return spans

    def process_timed(self, groups: list[TimedGroup]) -> int:
        """Records timed and counted only, by group (`framing.decode_grouped`): each group's record
        stands for all of its shape, with the durations of all of them (clock readings relative
        to the start, as the hand-off gives them). The same counts, durations and identities as
        `process` of the group's records one by one, all at the place of its first: within one
        batch (a few milliseconds of traffic) a record may be filed as if it came a moment
        earlier, e.g. a 404 before the first 2xx that vouched for its model name. Returns how many
        exchanges the groups stand for."""
        if not self._pending:
            self._pending_since = time.monotonic()
        latency = self._latency
        exchanges = 0
        for raw, durations in groups:
            count = len(durations)
            exchanges += count
            self._pending += count
            try:
                (scope, root_path_at_start, _, started, _, ended, _, status, response_headers, _, _, _, _,
                 exception_type, disconnected, _, weight, _, _) = raw  # fmt: skip
                key, error, client_gone, _ = self._file_timed_record(
                    scope, root_path_at_start, status, response_headers, exception_type,
                    disconnected, ended, weight, count,
                )  # fmt: skip
                series = latency.get(key)
                if series is None:
                    series = latency[key] = []
                series.extend(durations if not started else [duration - started for duration in durations])
                if client_gone:
                    self._gone[key] += count
                elif error is not None:
                    self._failed[key] += count
            except Exception:
                self.errors["process"] += count
                _log.debug("processing a group of exchanges failed", exc_info=True)
        self._step_when_due()
        return exchanges

    def _step_when_due(self) -> None:
        # Decoded payloads step every FLUSH_RECORDS (rows held as Python lists cost more per row,
        # past the caches, than another call); records timed and counted only, `flush_records`.
        if (
            self._pending_payloads >= FLUSH_RECORDS
            or self._pending >= self._flush_records
            or time.monotonic() - self._pending_since >= self._flush_age_s
        ):
            self.flush_pending()

    def _file_timed_record(
        self,
        scope: Any,
        root_path_at_start: str,
        status: int,
        response_headers: Any,
        exception_type: str | None,
        disconnected: bool,
        ended: float | None,
        weight: int,
        count: int,
    ) -> tuple[tuple[Any, ...], str | None, bool, tuple[Any, ...] | None]:
        """(latency key, error, client gone, shape) of `count` alike records timed and counted
        only. What such a record is filed under is worked out once per shape of the fields that
        decide it (the shape: None when its header pairs cannot be hashed); the identity book is
        still asked each time (its last-seen times and caps stay exact)."""
        routed = self._route_templates.of(scope, root_path_at_start)
        shape = (
            scope.get("path", ""),
            scope.get("method", "GET"),
            scope.get("scheme", "http"),
            scope.get("http_version", "1.1"),
            routed,
            scope.get(PROXY_ERROR_KEY),
            bool(scope.get(COLD_START_KEY)),
            status,
            exception_type,
            bool(disconnected),
            ended is None,
            tuple(response_headers),
        )
        shapes = self._shapes
        try:
            filed = shapes.get(shape)
            hashable = True
        except TypeError:  # ASGI lets an app send its header pairs as lists
            filed, hashable = None, False
        if filed is None:
            filed = self._filed_under(
                scope, routed, status, response_headers, exception_type, disconnected, ended
            )
            if hashable:
                if len(shapes) >= SHAPES_LIMIT:
                    shapes.clear()
                shapes[shape] = filed
        name, version, answer_version, status, error, client_gone, template = filed
        accepted = 200 <= status < 300
        model = self._stats.identity(
            self._config.model_name or name or self._default_model, version, accepted=accepted, count=count
        )
        if answer_version and accepted:
            self._stats.note_served(model, answer_version, count)
        key = (model, weight, shape[1], template, status, shape[2], shape[3], error, shape[6])
        return key, error, client_gone, shape if hashable else None

    def _timed_span(self, raw: RawRecord, key: tuple[Any, ...], shape: tuple[Any, ...] | None) -> Any:
        """The span of a traced record without its payload, filed under `key` (`_file_timed_record`):
        the identity `process` would give it from the URL and headers, and its repeating part
        encoded once per shape of what decides it (`SpanWireEncoder.encode`'s `shape_key`)."""
        scope, response_headers = raw[0], raw[8]
        event_id = b""
        for name, value in response_headers:
            if name == b"ce-id":
                event_id = value
        model = key[0]
        identity = ExchangeIdentity(
            route=key[3],
            model_name=str(model[0][1]),
            model_version=str(model[1][1]),
            request_id=self._request_id(scope, event_id),
            protocol=_NO_PAYLOAD_PROTOCOL,
            violations=_NO_VIOLATIONS,
        )
        record = ExchangeRecord._make(raw)
        shape_key = None
        if shape is not None:
            client = scope.get("client")
            wanted = request_shape(scope.get("headers") or (), self._span_options)
            trace = raw[15]
            shape_key = (shape, model, client[0] if client else None, scope.get("server"),
                         scope.get("query_string", b""), wanted, trace.enriched_local_span)  # fmt: skip
        return self._wire.encode(record, identity, shape_key)

    def _filed_under(
        self,
        scope: Any,
        routed: str | None,
        status: int,
        response_headers: Any,
        exception_type: str | None,
        disconnected: bool,
        ended: float | None,
    ) -> tuple[Any, ...]:
        """What a record without its payload is filed under: (model name, version, answered
        version, status, error, client gone, route template)."""
        decoded = self._without_payload(scope, response_headers)
        status, error, client_gone = _outcome(scope, status, exception_type, disconnected, ended)
        return (
            decoded.model_name,
            decoded.model_version,
            decoded.answer_version,
            status,
            error,
            client_gone,
            routed if routed is not None else _protocol_template(scope),
        )

    def _without_payload(self, scope: Any, response_headers: Any) -> DecodedPayload:
        """What an exchange says without its payload: the model identity from the URL and the
        headers, and the request id."""
        decoded = DecodedPayload()
        decoded.model_name, decoded.model_version = path_identity(scope.get("path", ""))
        self._identity_from_headers(scope, response_headers, decoded)
        return decoded

    def _observe_labels(self) -> None:
        """Joined labels against the reference's target distribution (prior shift)."""
        truth = self.truth
        if truth is None or truth.label_feature is None:
            return
        for (name, version), labels in truth.drain_labels().items():
            identity = self._stats.identity(name, version, accepted=True)
            values = [_label_value(label) for label in labels]
            self._stats.observe_columns(identity, "label", {truth.label_feature: values}, 1, True)

    def _keep_predictions(self, model: Attributes, decoded: DecodedPayload) -> None:
        """Hand the exchange's predictions, row by row, to the ground truth with their join keys."""
        truth = self.truth
        assert truth is not None
        predictions: list[Any] | None = decoded.output_values
        if truth.kind == "ranking":
            predictions = _ranked_rows(decoded)
        elif predictions is None and decoded.outputs:
            name = truth.prediction_output
            predictions = decoded.outputs.get(name) if name else None
            if predictions is None:
                predictions = decoded.outputs.get("prediction")
        if not predictions:
            return
        label_key = self._label_key
        key_values = _column(decoded, label_key, len(predictions)) if label_key else [None] * len(predictions)
        segments = (
            _column(decoded, truth.segment_feature, len(predictions)) if truth.segment_feature else None
        )
        keys = [
            join_key(label_key, decoded.request_id, row, key_values[row] if row < len(key_values) else None)
            for row in range(len(predictions))
        ]
        scores = decoded.outputs.get(truth.score_output) if truth.score_output and decoded.outputs else None
        truth.add_predictions(
            str(model[0][1]),
            str(model[1][1]),
            keys,
            predictions,
            time.monotonic(),
            scores=scores,
            segments=segments,
        )

    def _keep_exposures(self, model: Attributes, decoded: DecodedPayload, weight: int) -> None:
        """Hand the exchange's answered rows to the business outcomes with their join keys (a key
        longer than an outcome may name is no key: it could never be joined, only stored)."""
        business = self.business
        assert business is not None
        rows, label_key = decoded.rows, self._label_key
        values = _column(decoded, label_key, rows) if label_key else [None] * rows
        keys: list[tuple[str, ...] | None] = []
        for row in range(rows):
            key = join_key(label_key, decoded.request_id, row, values[row] if row < len(values) else None)
            keys.append(key if key is not None and len(key[1]) <= MAX_ID_LENGTH else None)
        business.add_exposures(str(model[0][1]), str(model[1][1]), keys, time.monotonic(), weight)

    def _freshness(self, model: Attributes, decoded: DecodedPayload, start_s: float, weight: int) -> None:
        """Take the event-time column out of the inputs (no drift, no schema check for it) and
        measure how old each row's event was when the exchange started."""
        key = self._freshness_key
        values: list[Any] | None = None
        if decoded.features and key in decoded.features:
            values = list(decoded.features.pop(key))
        elif decoded.matrix_rows is not None and key in decoded.matrix_names:
            j = decoded.matrix_names.index(key)
            rows = decoded.matrix_rows
            values = [row[j] if isinstance(row, list) and len(row) > j else None for row in rows]
            decoded.matrix_rows = [row[:j] + row[j + 1 :] if isinstance(row, list) else row for row in rows]
            decoded.matrix_names = decoded.matrix_names[:j] + decoded.matrix_names[j + 1 :]
        if not values or not weight:
            return
        seconds = [event_seconds(v) for v in values]
        times = [t for t in seconds if t is not None]
        bad = sum(1 for v, t in zip(values, seconds, strict=True) if t is None and v is not None)
        if bad:
            self._stats.count_violation(model, "type", bad * weight)
        if times:
            self._stats.observe_freshness(model, start_s - np.asarray(times), weight)

    def flush_pending(self) -> None:
        """Hand every grouped value to the statistics (before a snapshot, and from `process`)."""
        self._observe_labels()
        if not self._pending:
            return
        stats = self._stats
        latency, failed, gone = self._latency, self._failed, self._gone
        inputs, outputs = self._inputs, self._outputs
        self._latency, self._failed, self._gone, self._inputs, self._outputs = (
            {},
            Counter(),
            Counter(),
            {},
            {},
        )
        self._pending = self._pending_payloads = 0
        self.pending_bytes = 0
        for key, durations in latency.items():
            stats.observe_latency(
                key[0],
                self._http_attributes(key),
                np.asarray(durations),
                key[1],
                failed[key],
                gone[key],
                cold=key[8],
            )
        for (model, names, weight, accepted), parts in inputs.items():
            self._observe_rows(model, "input", names, parts, weight, accepted)
        for (model, weight, accepted), parts in outputs.items():
            self._observe_rows(
                model, "output", ("prediction",), [[[v] for v in p] for p in parts], weight, accepted
            )

    @staticmethod
    def _http_attributes(key: tuple[Any, ...]) -> Attributes:
        _model, _weight, method, route, status, scheme, version, error, _cold = key
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
        self,
        model: Attributes,
        role: str,
        names: tuple[str, ...],
        parts: list[list[Any]],
        weight: int,
        accepted: bool,
    ) -> None:
        # numpy would take a boolean as 1.0 and a numeric string as its number: a boolean feature
        # would then count as the categories "1" and "0" (all `__other__` against a reference of
        # "true"/"false"), and a string go by without its `type` violation. Only exchanges whose
        # cells are all numbers and nulls take the matrix (one C-level pass over the cells).
        plain: list[list[Any]] = []
        general: list[list[Any]] = []
        for part in parts:
            try:
                numbers_only = _MATRIX_CELLS.issuperset(map(type, chain.from_iterable(part)))
            except TypeError:  # a row that is not a list of cells
                numbers_only = False
            (plain if numbers_only else general).append(part)
        if plain:
            try:
                matrix = np.array(list(chain.from_iterable(plain)), dtype=np.float64)
                if matrix.ndim != 2 or matrix.shape[1] != len(names):
                    raise ValueError("ragged")
            except (ValueError, TypeError, OverflowError):
                # Ragged rows or integers beyond float range: the general path counts them.
                general.extend(plain)
            else:
                self._stats.observe_matrix(model, role, names, matrix, weight, len(plain), accepted)
        # Booleans, strings, nested values: per exchange, as the general path reads them.
        for part in general:
            violations: dict[str, int] = {}
            columns, _ = rows_to_columns(part, names if role == "input" else (), violations)
            if role == "output" and list(columns) == ["f0"]:
                columns = {"prediction": columns["f0"]}
            self._stats.observe_columns(model, role, columns, weight, accepted)
            for reason, count in violations.items():
                self._stats.count_violation(model, reason, count * weight)

    def _decode(
        self,
        scope: Any,
        status: int,
        response_headers: Any,
        request_parts: list[bytes],
        request_size: int,
        response_parts: list[bytes],
        response_size: int,
    ) -> DecodedPayload:
        cap = self._config.max_body_bytes
        if request_size > cap or response_size > cap:
            return DecodedPayload(skipped="body_over_cap")
        request_encoding = request_type = inference_header = b""
        for key, value in scope.get("headers") or ():
            if key == b"content-encoding":
                request_encoding = value
            elif key == b"content-type":
                request_type = value
            elif key == b"inference-header-content-length":
                inference_header = value
        response_encoding = response_type = b""
        for key, value in response_headers:
            if key == b"content-encoding":
                response_encoding = value
            elif key == b"content-type":
                response_type = value
        decoded = decode_exchange(
            ExchangeBytes(
                scope.get("method", "GET"),
                scope.get("path", ""),
                request_parts[0] if len(request_parts) == 1 else b"".join(request_parts),
                response_parts[0] if len(response_parts) == 1 else b"".join(response_parts),
                status,
                request_encoding.decode("latin-1"),
                response_encoding.decode("latin-1"),
                self._feature_names,
                request_type.decode("latin-1"),
                response_type.decode("latin-1"),
                int(inference_header) if inference_header.strip().isdigit() else None,
            ),
            max_decoded_bytes=4 * cap + 1024,
            options=self._decode_options,
        )
        self._identity_from_headers(scope, response_headers, decoded)
        return decoded

    def _identity_from_headers(self, scope: Any, response_headers: Any, decoded: DecodedPayload) -> None:
        """Model version, model name and request id from headers (PROTOCOLS.md section 7): the
        version header wins over the payload; the others fill in what the payload lacked."""
        version = model_id = event_id = b""
        for key, value in response_headers:
            if key == self._version_header:
                version = value
            elif key[:3] == b"ce-":
                if key == b"ce-modelid":
                    model_id = value
                elif key == b"ce-id":
                    event_id = value
        if version:
            decoded.model_version = sanitize(version.decode("latin-1")) or decoded.model_version
            decoded.answer_version = decoded.model_version
        if model_id and not decoded.model_name:
            decoded.model_name = sanitize(model_id.decode("latin-1"))
        if not decoded.request_id:
            request_id = self._request_id(scope, event_id)
            if request_id is not None:
                decoded.request_id = request_id

    def _request_id(self, scope: Any, event_id: bytes) -> str | None:
        """The request id header's value (the last one), else the CloudEvents id answered."""
        request_id = b""
        for key, value in scope.get("headers") or ():
            if key == self._request_id_header:
                request_id = value
        chosen = request_id or event_id
        return sanitize(chosen.decode("latin-1")) if chosen else None

    def _span(
        self, record: ExchangeRecord, decoded: DecodedPayload, model: Attributes, route: str | None
    ) -> bytes | ReadableSpan:
        """Encoded OTLP bytes for modeltap's own exporter, or an SDK span for the app's provider."""
        identity = ExchangeIdentity(
            route=route,
            model_name=str(model[0][1]),
            model_version=str(model[1][1]),
            request_id=decoded.request_id,
            protocol=decoded.protocol,
            violations=decoded.violations,
        )
        if self.sdk_spans:
            return build_span(record, identity, self._span_options, self._resource())
        return self._wire.encode(record, identity)


def _protocol_template(scope: Any) -> str | None:
    """The route template of a known inference protocol's path (where no framework named one)."""
    known = protocol_route(scope.get("path", ""))
    return known.template if known is not None else None


def _outcome(
    scope: Any, status: int, exception_type: str | None, disconnected: bool, ended: float | None
) -> tuple[int, str | None, bool]:
    """(status, error type, whether the client left) of an exchange as it is counted."""
    proxy_error = scope.get(PROXY_ERROR_KEY)
    error = proxy_error or exception_type
    # A client that left is not a model error: counted apart, outside the error rate.
    # (Starlette answers the ClientDisconnect it raises with a 500 nobody receives.)
    client_gone = proxy_error == "client_disconnected" or (
        disconnected and proxy_error is None and (ended is None or exception_type is not None)
    )
    if client_gone:
        error = "client_disconnected"
        if exception_type is not None:
            status = 0  # an error page for a client that was no longer there
    elif not status and exception_type is not None:
        status = 500  # the server answers an exception before the response with a 500
    elif error is None and status >= 500:
        error = str(status)
    return status, error, client_gone


def _label_value(label: Any) -> Any:
    """A label as the drift state takes values: numbers as floats, anything else as given."""
    if isinstance(label, (int, float)) and not isinstance(label, bool):
        return float(label)
    return label


def _column(decoded: DecodedPayload, name: str, rows: int) -> list[Any]:
    """An input column's values for each row of the exchange (None where it is absent)."""
    if decoded.matrix_rows is not None and name in decoded.matrix_names:
        index = decoded.matrix_names.index(name)
        return [row[index] for row in decoded.matrix_rows]
    if decoded.features and name in decoded.features:
        return list(decoded.features[name])
    return [None] * rows


def _ranked_rows(decoded: DecodedPayload) -> list[Any] | None:
    """A ranker's answers, one ranked list per row: rows of lists decode as positional outputs
    `prediction0`, `prediction1`, … (capped like every output: `max_outputs` items per list)."""
    if not decoded.outputs:
        return None
    positions = sorted(
        (int(name[10:]), column)
        for name, column in decoded.outputs.items()
        if name.startswith("prediction") and name[10:].isdigit()
    )
    if not positions:
        single = decoded.outputs.get("prediction")  # one-item lists decode under this name
        return [[] if value is None else [value] for value in single] if single is not None else None
    rows = len(positions[0][1])
    return [
        [column[row] for _, column in positions if row < len(column) and column[row] is not None]
        for row in range(rows)
    ]
