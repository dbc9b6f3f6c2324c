"""W3C trace context on the request path: parse `traceparent`, make ids, decide sampling.

Only what must happen while the request is live is here; spans are built on the worker.
"""

from __future__ import annotations

import random
import re

from modeltap.config import SamplerConfig

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ID_LIMIT = 1 << 64
# W3C Trace Context §3.3: `key=value` list members, keys of lowercase letters, digits and `_-*/`
# (with an optional `@vendor` part), values of printable ASCII but `,` and `=`, not ending in a
# space; at most 32 members. The whole value is bounded as OpenTelemetry's propagator bounds it.
_TRACESTATE_MEMBER = re.compile(
    rb"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    rb"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
TRACESTATE_MAX_MEMBERS = 32
TRACESTATE_MAX_BYTES = 8192


def parse_traceparent(value: bytes) -> tuple[int, int, bool] | None:
    """(trace_id, parent_span_id, sampled) from a `traceparent` value, or None if invalid.

    Follows W3C Trace Context §3.2: version ff is invalid, version 00 has no trailing fields,
    all-zero ids are invalid; unknown future versions are read by their 00 prefix.
    """
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest):
        return None
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, bool(int(flags_hex, 16) & 1)


def parse_tracestate(value: bytes) -> str:
    """A `tracestate` value as it is passed on, or "" when it is not one (W3C Trace Context §3.3).

    The client sends it; it reaches every span of the trace. So it is taken only when it is
    well formed (each key at most once) and bounded (32 members, 8192 bytes), and otherwise
    dropped whole, as the OpenTelemetry SDK drops an invalid one. Empty members (`a=1,,b=2`) are
    allowed and left out.
    """
    if len(value) > TRACESTATE_MAX_BYTES:
        return ""
    members = [member.strip(b" \t") for member in value.split(b",")]
    members = [member for member in members if member]
    if len(members) > TRACESTATE_MAX_MEMBERS:
        return ""
    keys: set[bytes] = set()
    for member in members:
        if _TRACESTATE_MEMBER.fullmatch(member) is None:
            return ""
        key = member.partition(b"=")[0]
        if key in keys:
            return ""  # a key at most once (§3.3.1.1)
        keys.add(key)
    return ",".join(member.decode("ascii") for member in members)


def new_trace_id() -> int:
    while True:
        value = random.getrandbits(128)
        if value:
            return value


def new_span_id() -> int:
    while True:
        value = random.getrandbits(64)
        if value:
            return value


class TraceSampler:
    """The OTEL_TRACES_SAMPLER family, decided from ids alone (no SDK call on the hot path).

    The ratio test is the SDK's `TraceIdRatioBased`: the low 64 bits of the trace id below
    `round(ratio * 2**64)`, so a trace is kept or dropped consistently across services.
    """

    def __init__(self, config: SamplerConfig) -> None:
        name = config.name
        self.parent_based = name.startswith("parentbased_")
        root = name.removeprefix("parentbased_")
        if root == "always_on":
            self._bound = _ID_LIMIT
        elif root == "always_off":
            self._bound = 0
        else:
            self._bound = round(config.ratio * _ID_LIMIT)
        self.never = self._bound == 0 and not self.parent_based

    def set_ratio(self, ratio: float) -> None:
        """Change the share of new traces kept (the monitor's control messages)."""
        self._bound = round(min(1.0, max(0.0, ratio)) * _ID_LIMIT)

    def sample(self, trace_id: int, parent_sampled: bool | None) -> bool:
        if parent_sampled is not None and self.parent_based:
            return parent_sampled
        return (trace_id & (_ID_LIMIT - 1)) < self._bound

    def new_sampled_trace_id(self) -> int | None:
        """A new root trace's id, or None when the ratio drops it. The low 64 bits (the ones the
        ratio tests) are drawn first, so the nine in ten dropped traces cost one draw."""
        low = random.getrandbits(64)
        if low >= self._bound:
            return None
        while True:
            trace_id = (random.getrandbits(64) << 64) | low
            if trace_id:
                return trace_id
