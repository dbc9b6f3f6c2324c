"""What a decoder allocates stays proportional to the body it was given (RELIABILITY.md: bounded
memory), measured with tracemalloc for hostile bodies: client-chosen names copied into every
cell's name, client-chosen widths memoised, sparse keys padded into a dense table, rank-0 inputs
repeated for every row.

The JSON parse is measured out: its cost is the parser's (about 15 times the body for lists of
small numbers) and the same for every decoder; what is bounded here is the decoder's own
allocation on top of it, and what it still holds once its result is gone (caches).

The bound: a decoded number costs 32 bytes (a float and its list slot) where compact JSON spends
2 on it (`0,`), so 16 times the body is the floor of any decode that keeps every value; the fill
budget (tabular.FILL_PER_VALUE) may add 2 slots per value of the body, 8 times more at most."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from modeltap.protocols import kserve_v1, oip_v2, tf_serving
from modeltap.protocols.payload import DecodedPayload, ExchangeBytes

# The decoder's peak allocation, and what it holds afterwards, as multiples of the body.
PEAK_PER_BODY = 32
HELD_PER_BODY = 2
LIMIT = 16 * 1024 * 1024
NAME = "n" * 2000


def _decoder(path: str) -> Callable[[ExchangeBytes, Any, DecodedPayload], None]:
    def run(exchange: ExchangeBytes, request: Any, out: DecodedPayload) -> None:
        if path.startswith("/v2/"):
            oip_v2.decode(exchange, request, out, LIMIT)
        elif kserve_v1.is_request(request):
            kserve_v1.decode(exchange, request, None, out)
        else:
            tf_serving.decode(exchange, request, None, out)

    return run


def measure(path: str, request: Any) -> tuple[int, int, int, DecodedPayload]:
    """(body size, peak bytes, bytes still held after the result is dropped, the result)."""
    body = orjson.dumps(request)
    exchange = ExchangeBytes("POST", path, body, b"", 200)
    document = orjson.loads(body)
    run = _decoder(path)
    result = DecodedPayload()
    run(exchange, orjson.loads(body), result)
    gc.collect()
    tracemalloc.start()
    try:
        out = DecodedPayload()
        run(exchange, document, out)
        _, peak = tracemalloc.get_traced_memory()
        del out
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return len(body), peak, held, result


def assert_bounded(body: int, peak: int, held: int) -> None:
    assert peak < PEAK_PER_BODY * body, f"peak {peak} B for a {body} B body"
    assert held < HELD_PER_BODY * body, f"{held} B held after decoding a {body} B body"


MATRIX = [[0] * 16 for _ in range(16)]
HOSTILE: dict[str, tuple[str, Any]] = {
    # tf_serving columnar: `name[j,k]` for every cell of every row.
    "columnar_long_name": ("/v1/models/m:predict", {"inputs": {NAME: [MATRIX] * 100}}),
    # the same per instance in the row format.
    "rows_long_name": ("/v1/models/m:predict", {"instances": [{NAME: MATRIX}] * 100}),
    # oip_v2: 256 names of a 20 000-character tensor name, per distinct name.
    "oip_long_names": (
        "/v2/models/m/infer",
        {
            "inputs": [
                {"name": f"{i}{NAME * 10}", "datatype": "FP32", "shape": [1, 256], "data": [0.0] * 256}
                for i in range(4)
            ]
        },
    ),
    # a key in one row of thousands: a dense table of missing cells.
    "sparse_keys": (
        "/v1/models/m:predict",
        {"instances": [{} for _ in range(20_000)] + [{f"k{i}": 1} for i in range(1000)]},
    ),
    # rank-0 inputs, each repeated for every row of a long one.
    "rank_zero_repeats": (
        "/v1/models/m:predict",
        {"inputs": {"a": [0] * 20_000, **{f"s{i}": 1 for i in range(500)}}},
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_bodies_stay_proportional(case: str) -> None:
    path, request = HOSTILE[case]
    body, peak, held, out = measure(path, request)
    assert_bounded(body, peak, held)
    assert out.violations.get("schema", 0) >= 1  # what was refused is counted, never silent


def test_long_names_are_refused_with_a_schema_violation() -> None:
    for case in ("columnar_long_name", "rows_long_name"):
        *_, out = measure(*HOSTILE[case])
        assert (out.features, out.rows, out.violations) == ({}, 100, {"schema": 1})
    *_, out = measure(*HOSTILE["oip_long_names"])
    assert (out.features, out.rows, out.violations) == ({}, 1, {"schema": 4})


def test_wide_rows_of_distinct_widths_are_not_memoised_whole() -> None:
    """Each distinct row width used to keep a tuple of `width` names after the request."""
    requests = [orjson.loads(orjson.dumps({"instances": [[0] * (60_000 + k)]})) for k in range(6)]
    bodies = sum(len(orjson.dumps(request)) for request in requests)
    gc.collect()
    tracemalloc.start()
    try:
        for request in requests:
            out = DecodedPayload()
            exchange = ExchangeBytes("POST", "/v1/models/m:predict", b"", b"", 200)
            kserve_v1.decode(exchange, request, None, out)
            assert out.matrix_rows is None  # past MAX_COLUMNS: capped by rows_to_columns
            assert (len(out.features), out.violations) == (2048, {"schema": 1})
            del out
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < bodies // 2, f"{held} B held after decoding {bodies} B of bodies"


def test_dense_bodies_are_within_the_same_bound() -> None:
    """The bound is not only met by refusing: ordinary batches decode within it too."""
    rows = [{"a": 0.5, "b": "x", "v": [1.0, 2.0, 3.0], "m": [[1, 2], [3, 4]]} for _ in range(2000)]
    body, peak, held, out = measure("/v1/models/m:predict", {"instances": rows})
    assert (out.rows, len(out.features), out.violations) == (2000, 9, {})
    assert_bounded(body, peak, held)
    columns = {"a": [0.5] * 2000, "m": [[[1, 2], [3, 4]]] * 2000, "t": 1}
    body, peak, held, out = measure("/v1/models/m:predict", {"inputs": columns})
    assert (out.rows, len(out.features), out.violations) == (2000, 6, {})
    assert_bounded(body, peak, held)
