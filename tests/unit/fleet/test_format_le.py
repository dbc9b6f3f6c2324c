"""`le` strings as Go's `strconv.FormatFloat(b, 'g', -1, 64)` writes them: the Collector's
Prometheus exporter does, and Prometheus 2 joins buckets on the exact string."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modeltap.export.prometheus_text import format_le

# What Go prints for these: with precision -1, 'g' uses the exponent form when the decimal
# exponent is < -4 or >= 6 (strconv's %g rule with "shortest" counted as precision 6).
GO = {
    0.005: "0.005",
    1.0: "1",
    10.0: "10",
    2.5: "2.5",
    100000.0: "100000",
    999999.0: "999999",
    1e6: "1e+06",
    1234567.0: "1.234567e+06",
    123456789.0: "1.23456789e+08",
    0.0001: "0.0001",
    0.00012: "0.00012",
    1e-05: "1e-05",
    2.5e-07: "2.5e-07",
    0.1 + 0.2: "0.30000000000000004",
    -3.25: "-3.25",
    -1e6: "-1e+06",
    5e-324: "5e-324",
    1.7976931348623157e308: "1.7976931348623157e+308",
    1e100: "1e+100",
    0.0: "0",
    math.inf: "+Inf",
    -math.inf: "-Inf",
}


@pytest.mark.parametrize(("value", "text"), GO.items(), ids=[repr(v) for v in GO])
def test_bounds_are_written_as_go_writes_them(value: float, text: str) -> None:
    assert format_le(value) == text


def test_negative_zero_is_written_as_zero() -> None:
    assert format_le(-0.0) == "0"


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_bound_reads_back_as_the_same_float(value: float) -> None:
    assert float(format_le(value)) == value


# Go's FormatFloat(b, 'f', -1, 64), as the Collector's remote-write exporter writes bounds.
GO_PLAIN = {
    0.005: "0.005",
    10.0: "10",
    1e6: "1000000",
    1234567.0: "1234567",
    1e-05: "0.00001",
    2.5e-07: "0.00000025",
    1e21: "1000000000000000000000",
    -3.25: "-3.25",
    0.1 + 0.2: "0.30000000000000004",
}


@pytest.mark.parametrize(("value", "text"), GO_PLAIN.items(), ids=[repr(v) for v in GO_PLAIN])
def test_plain_bounds_are_written_as_remote_write_writes_them(value: float, text: str) -> None:
    assert format_le(value, plain=True) == text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_plain_bounds_read_back_and_never_use_an_exponent(value: float) -> None:
    text = format_le(value, plain=True)
    assert float(text) == value
    assert "e" not in text
