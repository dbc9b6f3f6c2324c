"""Pick the decoder for an exchange and run it without ever raising.

Detection, first match wins: a route the user pinned to a protocol; the Open Inference Protocol
binary extension (its body is not JSON); OpenAI-style paths and bodies; Open Inference Protocol
V2; Seldon Core v1; KServe V1 / TF Serving rows (`instances`); TF Serving columnar, classify and
regress; a user field mapping when one is configured; plain JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from modeltap.config import PROTOCOL_NAMES
from modeltap.protocols import kserve_v1, oip_v2, openai_style, plain_json, seldon, tf_serving
from modeltap.protocols.json_body import BodyError, loads, read_body
from modeltap.protocols.mapping import FieldMapping
from modeltap.protocols.payload import DecodedPayload, ExchangeBytes, count
from modeltap.protocols.routes import protocol_route

MAX_ID_CHARS = 128
PROTOCOLS = PROTOCOL_NAMES


@dataclass(frozen=True)
class DecodeOptions:
    """User choices: protocols pinned per path prefix, and a field mapping for other JSON."""

    routes: Mapping[str, str] = field(default_factory=dict)  # path prefix -> protocol name
    mapping: FieldMapping | None = None

    def pinned(self, path: str) -> str | None:
        best: str | None = None
        for prefix in self.routes:
            if path.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        return None if best is None else self.routes[best]


DEFAULT_OPTIONS = DecodeOptions()


def sanitize(value: Any, limit: int = MAX_ID_CHARS) -> str | None:
    """A payload value made safe to use as an attribute: printable, bounded, or None."""
    if value is None or isinstance(value, (dict, list)):
        return None
    if type(value) is str and len(value) <= limit and value.isprintable():
        return value or None  # the common case, without building a new string
    text = value if isinstance(value, str) else str(value)
    cleaned = "".join(ch for ch in text[:limit] if ch.isprintable())
    return cleaned or None


def _json_or_none(body: bytes, encoding: str, limit: int, out: DecodedPayload) -> Any:
    if not body:
        return None  # nothing sent (GET, probes): nothing to decode, nothing wrong
    if not encoding:
        try:
            return orjson.loads(body)  # the common case, without the layers below
        except orjson.JSONDecodeError:
            pass
    decoded = read_body(body, encoding, limit, out)
    if decoded is None:
        return None
    try:
        return loads(decoded)
    except BodyError as exc:
        count(out.violations, exc.reason)
        return None


def path_identity(path: str) -> tuple[str | None, str | None]:
    """The model name and version a URL names (a claim: see `stats.identities`)."""
    name, version = oip_v2.parse_path(path)
    if name is None:
        name, version = kserve_v1.parse_path(path)  # also TF Serving's /versions/ and /labels/
    return sanitize(name), sanitize(version)


def _needs_body(exchange: ExchangeBytes, options: DecodeOptions) -> bool:
    """A POST to a protocol's inference route (or a route pinned to a protocol) has a payload."""
    if exchange.method != "POST":
        return False
    if options.pinned(exchange.path) is not None:
        return True
    route = protocol_route(exchange.path)
    return route is not None and route.needs_body


def _choose(exchange: ExchangeBytes, request: Any, options: DecodeOptions) -> str:
    pinned = options.pinned(exchange.path)
    if pinned is not None:
        return pinned
    if exchange.inference_header_length is not None:
        return "oip_v2"
    if openai_style.matches(exchange, request):
        return "openai"
    if oip_v2.matches(exchange, request):
        return "oip_v2"
    if seldon.matches(exchange, request):
        return "seldon"
    if kserve_v1.is_request(request):
        return "kserve_v1"
    if tf_serving.matches(exchange, request):
        return "tf_serving"
    if options.mapping is not None and options.mapping.matches(exchange, request):
        return "mapping"
    return "json"


def decode_exchange(
    exchange: ExchangeBytes,
    max_decoded_bytes: int = 16 * 1024 * 1024,
    options: DecodeOptions = DEFAULT_OPTIONS,
) -> DecodedPayload:
    """Decode one exchange; any failure becomes a counted violation on the result."""
    out = DecodedPayload()
    try:
        # The URL names the model even when the body cannot be read (PROTOCOLS.md section 7).
        out.model_name, out.model_version = path_identity(exchange.path)
        binary = exchange.inference_header_length is not None
        request = (
            None
            if binary
            else _json_or_none(
                exchange.request_body, exchange.request_content_encoding, max_decoded_bytes, out
            )
        )
        if request is None and not binary:
            if not out.violations and _needs_body(exchange, options):
                count(out.violations, "decode_error")  # an inference call with an empty or null body
            out.model_name = sanitize(out.model_name)
            out.model_version = sanitize(out.model_version)
            return out
        protocol = _choose(exchange, request, options)
        ok = 200 <= exchange.status < 300
        if protocol == "oip_v2":
            oip_v2.decode(exchange, request, out, max_decoded_bytes)
        elif protocol == "openai":
            openai_style.decode(exchange, request, out, max_decoded_bytes)
        else:
            response = (
                _json_or_none(
                    exchange.response_body, exchange.response_content_encoding, max_decoded_bytes, out
                )
                if ok
                else None
            )
            if protocol == "seldon":
                seldon.decode(exchange, request, response, out)
            elif protocol == "kserve_v1" and kserve_v1.is_request(request):
                kserve_v1.decode(exchange, request, response, out)
            elif protocol == "tf_serving":
                tf_serving.decode(exchange, request, response, out)
            elif protocol == "mapping" and options.mapping is not None:
                options.mapping.decode(request, response, exchange, out)
            else:
                plain_json.decode(exchange, request, response, out)
            if type(response) is dict:
                out.answer_version = out.answer_version or response.get("model_version")
                out.model_version = out.model_version or response.get("model_version")
                out.model_name = out.model_name or response.get("model_name")
                if out.request_id is None and "id" in response:
                    out.request_id = response["id"]
        out.model_version = sanitize(out.model_version)
        out.answer_version = sanitize(out.answer_version)
        out.model_name = sanitize(out.model_name)
        out.request_id = sanitize(out.request_id)
    except Exception:
        # A decoder bug must cost one counted violation, never the worker thread.
        count(out.violations, "decode_error", 1)
        out.features.clear()
        out.outputs.clear()
        out.matrix_rows = None
        out.output_values = None
        out.rows = 0
    return out
