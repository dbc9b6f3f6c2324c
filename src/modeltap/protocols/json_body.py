"""Body bytes to Python values: content-coding, then orjson with a tolerant fallback."""

from __future__ import annotations

import json
import zlib
from typing import Any

import orjson

from modeltap.protocols.payload import DecodedPayload, count

_NOT_JSON = object()


class BodyError(Exception):
    """The body cannot be read as JSON; `reason` is the violation to count."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_content(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """Undo gzip/deflate content-coding, refusing to inflate past `max_bytes` (zip bombs)."""
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise BodyError("decode_error")
    wbits = 16 + zlib.MAX_WBITS if coding != "deflate" else zlib.MAX_WBITS
    try:
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error:
        raise BodyError("decode_error") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise BodyError("body_too_large")
    return out


def loads(body: bytes) -> Any:
    """Parse JSON; NaN/Infinity tokens (TF Serving writes them) parse to float('nan')/inf."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        # The stdlib accepts NaN/Infinity tokens that strict orjson rejects; it is only tried
        # for bodies orjson refused, so the common path stays fast.
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BodyError("decode_error") from None


def read_body(body: bytes, encoding: str, limit: int, out: DecodedPayload) -> bytes | None:
    """The body with its content-coding undone, or None: a body over the bound marks the
    exchange skipped (not the payload's fault), an undecodable one counts a violation."""
    try:
        return decode_content(body, encoding, limit)
    except BodyError as exc:
        if exc.reason == "body_too_large":
            out.skipped = exc.reason
        else:
            count(out.violations, exc.reason)
        return None
