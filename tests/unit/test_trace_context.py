"""Trace sampling on the request path agrees with the OpenTelemetry SDK's ratio sampler; the
client's `traceparent` and `tracestate` are read as W3C Trace Context and the SDK read them."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
from opentelemetry.trace.span import TraceState

from modeltap.capture.trace_context import (
    TRACESTATE_MAX_BYTES,
    TraceSampler,
    parse_traceparent,
    parse_tracestate,
)
from modeltap.config import SamplerConfig


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 1.0])
def test_new_root_ids_are_the_ones_the_sdk_would_keep(ratio: float) -> None:
    random.seed(7)
    sampler = TraceSampler(SamplerConfig("parentbased_traceidratio", ratio))
    sdk = TraceIdRatioBased(ratio)
    draws = 20_000
    kept = [trace_id for trace_id in (sampler.new_sampled_trace_id() for _ in range(draws)) if trace_id]
    for trace_id in kept:
        assert 0 < trace_id < 1 << 128
        assert sampler.sample(trace_id, None)
        assert sdk.should_sample(None, trace_id, "span").decision is Decision.RECORD_AND_SAMPLE
    # Binomial share: within 5 standard deviations of the ratio.
    spread = 5 * math.sqrt(ratio * (1 - ratio) / draws)
    assert abs(len(kept) / draws - ratio) <= spread
    assert len(set(kept)) == len(kept)


def test_the_high_half_of_kept_ids_is_random_too() -> None:
    random.seed(11)
    sampler = TraceSampler(SamplerConfig("always_on", 1.0))
    highs = {trace_id >> 64 for trace_id in (sampler.new_sampled_trace_id() for _ in range(1000)) if trace_id}
    assert len(highs) == 1000


def test_a_changed_ratio_applies_to_the_next_new_trace() -> None:
    sampler = TraceSampler(SamplerConfig("parentbased_traceidratio", 1.0))
    sampler.set_ratio(0.0)
    assert all(sampler.new_sampled_trace_id() is None for _ in range(1000))


TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
IDS = (int(TRACE, 16), int(PARENT, 16))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"00-{TRACE}-{PARENT}-01".encode(), (*IDS, True)),
        (f"00-{TRACE}-{PARENT}-00".encode(), (*IDS, False)),
        (f"01-{TRACE}-{PARENT}-01-later".encode(), (*IDS, True)),
        (f"00-{TRACE}-{PARENT}-01-extra".encode(), None),  # version 00: no more fields
        (f"ff-{TRACE}-{PARENT}-01".encode(), None),
        (f"00-{0:032x}-{PARENT}-01".encode(), None),
        (f"00-{TRACE}-{0:016x}-01".encode(), None),
        (f"00-{TRACE.upper()}-{PARENT}-01".encode(), None),  # upper case is invalid
    ],
)
def test_traceparent(value: bytes, expected: tuple[int, int, bool] | None) -> None:
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"congo=t61rcWkgMzE", "congo=t61rcWkgMzE"),
        (b"rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        (b"a=1,,b=2", "a=1,b=2"),  # empty members are allowed and left out
        (b"tenant@vendor=x", "tenant@vendor=x"),
        (b"a=1\t", "a=1"),  # optional white space around members
        (b"Upper=1", ""),  # keys are lowercase
        (b"a=b=c", ""),  # '=' is not a value character
        (b"a=", ""),  # a value has at least one character
        (b"a=1,garbage", ""),  # one bad member drops the whole value, as the SDK does
        (b"a=1,b=2,a=3", ""),  # a key at most once
        (b"a=\xff", ""),  # printable ASCII only
        (b",".join(b"k%d=v" % i for i in range(32)), ",".join(f"k{i}=v" for i in range(32))),
        (b",".join(b"k%d=v" % i for i in range(33)), ""),  # at most 32 members
        (b"k=" + b"v" * 256, "k=" + "v" * 256),
        (b"k=" + b"v" * 257, ""),  # values of 256 characters at most
    ],
)
def test_tracestate(value: bytes, expected: str) -> None:
    assert parse_tracestate(value) == expected


def test_a_tracestate_longer_than_the_bound_is_dropped_whole() -> None:
    members = [b"k%02d=%s" % (i, b"v" * 255) for i in range(32)]  # 32 valid members
    value = b",".join(members)
    assert len(value) > TRACESTATE_MAX_BYTES
    assert parse_tracestate(value) == ""
    within = b",".join(members[:30])
    assert len(within) <= TRACESTATE_MAX_BYTES
    assert parse_tracestate(within) == within.decode()


_KEY = st.from_regex(r"[a-z][a-z0-9_*/-]{0,8}", fullmatch=True)
_VALUE = st.from_regex(r"[\x21-\x2b\x2d-\x3c\x3e-\x7e]{1,8}", fullmatch=True)


@given(st.lists(st.tuples(_KEY, _VALUE), max_size=40), st.booleans())
def test_tracestate_agrees_with_the_sdk(members: list[tuple[str, str]], spaced: bool) -> None:
    """What is kept is what OpenTelemetry's `TraceState.from_header` keeps, in the same order."""
    value = (", " if spaced else ",").join(f"{key}={val}" for key, val in members)
    kept = parse_tracestate(value.encode())
    sdk = TraceState.from_header([value]) if members else TraceState()
    assert kept == sdk.to_header()
