"""Trace sampling on the request path agrees with the OpenTelemetry SDK's ratio sampler."""

from __future__ import annotations

import math
import random

import pytest
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from modeltap.capture.trace_context import TraceSampler, parse_traceparent
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
