"""Pick the decoder for an exchange and run it without ever raising."""

from __future__ import annotations

from typing import Any

import orjson

from modeltap.protocols import kserve_v1, plain_json
from modeltap.protocols.json_body import BodyError, decode_content, loads
from modeltap.protocols.payload import DecodedPayload, ExchangeBytes, count

MAX_ID_CHARS = 128


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
    try:
        return loads(decode_content(body, encoding, limit))
    except BodyError as exc:
        if exc.reason == "body_too_large":
            out.skipped = exc.reason
        else:
            count(out.violations, exc.reason)
        return None


def decode_exchange(exchange: ExchangeBytes, max_decoded_bytes: int = 16 * 1024 * 1024) -> DecodedPayload:
    """Decode one exchange; any failure becomes a counted violation on the result."""
    out = DecodedPayload()
    try:
        request = _json_or_none(
            exchange.request_body, exchange.request_content_encoding, max_decoded_bytes, out
        )
        response = None
        if 200 <= exchange.status < 300:
            response = _json_or_none(
                exchange.response_body,
                exchange.response_content_encoding,
                max_decoded_bytes,
                out,
            )
        if request is None:
            return out
        if kserve_v1.is_request(request):
            kserve_v1.decode(exchange, request, response, out)
        else:
            plain_json.decode(exchange, request, response, out)
        if type(response) is dict:
            version = out.model_version or response.get("model_version")
            name = out.model_name or response.get("model_name")
            if "id" in response:
                out.request_id = sanitize(response["id"])
        else:
            version, name = out.model_version, out.model_name
        out.model_version = None if version is None else sanitize(version)
        out.model_name = None if name is None else sanitize(name)
    except Exception:
        # A decoder bug must cost one counted violation, never the worker thread.
        count(out.violations, "decode_error", 1)
        out.features.clear()
        out.outputs.clear()
        out.rows = 0
    return out
