"""Issue "trust", item 5: decoded data counts against the memory bound, not only raw bytes.

Bodies under the decode cap (965 KB each) parse into several times their size of Python objects;
the worker must not hold a whole batch of them for its numpy step, and what it holds is charged to
the queue's byte bound so new records are dropped (and counted) instead of piling up."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import orjson
import pytest
from opentelemetry.sdk.resources import Resource

from modeltap.capture.record_queue import new_record_queue
from modeltap.config import DEFAULT_DURATION_BUCKETS_S, ModelTapConfig
from modeltap.export.spans import SpanOptions
from modeltap.records import RawRecord
from modeltap.stats import StatsAggregator
from modeltap.worker.pipeline import BatchPipeline
from tests.support.asgi_driver import make_http_scope

BODY_TARGET = 965 * 1024
ROW_WIDTH = 30


def big_body(seed: int) -> bytes:
    """A KServe V1 request just under the 1 MiB decode cap: rows of 30 floats."""
    rng = np.random.default_rng(seed)
    row = orjson.dumps({"instances": [rng.normal(size=ROW_WIDTH).tolist()]})
    rows = BODY_TARGET // (len(row) - 15)
    body = orjson.dumps({"instances": rng.normal(size=(rows, ROW_WIDTH)).tolist()})
    assert len(body) < 1024 * 1024
    return body


def raw_record(body: bytes) -> RawRecord:
    scope = make_http_scope("POST", "/v1/models/big:predict")
    response = b'{"predictions": [0.5]}'
    return (
        scope, "", 0, 0.0, 0.001, 0.002, 0.002, 200,
        [(b"content-type", b"application/json")],
        [body], len(body), [response], len(response), None, False, None, 1, 1, None,
    )  # fmt: skip


def pipeline(config: ModelTapConfig) -> BatchPipeline:
    stats = StatsAggregator(config.series_limit, DEFAULT_DURATION_BUCKETS_S)
    options = SpanOptions(False, 0, (), ())
    return BatchPipeline(config, None, stats, options, Resource.get_empty, "big")


def test_a_batch_of_large_bodies_is_not_held_decoded_all_at_once() -> None:
    config = ModelTapConfig(monitor="inline", model_name="big")
    bodies = [big_body(seed) for seed in range(3)]
    records = [raw_record(bodies[i % 3]) for i in range(24)]
    worker = pipeline(config)
    worker.process(records[:1])  # warm-up: caches and the model state
    worker.flush_pending()
    gc.collect()
    tracemalloc.start()
    try:
        worker.process(records[1:])
        peak = tracemalloc.get_traced_memory()[1]
        held = worker.pending_bytes
        worker.flush_pending()
    finally:
        tracemalloc.stop()
    # 23 bodies decode to about 23 x 2.5 MB of floats and lists; holding them all for one numpy
    # step peaked near 60 MB. Now the step runs whenever the held rows pass their share of the
    # queue's bound (8 MiB by default), so at most a few bodies' worth is alive.
    assert held <= 8 * 1024 * 1024 + 3 * 1024 * 1024
    assert peak < 24 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while processing"
    (view,) = worker._stats.model_views()
    assert view.decoded_rows == 24 * (len(orjson.loads(bodies[0])["instances"]))


def test_what_the_worker_holds_counts_against_the_queue_bound() -> None:
    queue = new_record_queue(max_records=1000, max_bytes=10 * 1024 * 1024)
    assert queue.offer(("first",), 4 * 1024 * 1024)
    queue.drain(10)
    queue.worker_held_bytes = queue.drained_bytes + 4 * 1024 * 1024  # the batch and decoded rows
    assert queue.pending_bytes > 8 * 1024 * 1024
    assert not queue.offer(("second",), 2 * 1024 * 1024)
    assert queue.dropped_bytes == 1
    queue.worker_held_bytes = 0  # processed and let go
    assert queue.offer(("third",), 2 * 1024 * 1024)


@pytest.mark.parametrize("queue_mib", [4, 64])
def test_the_flush_threshold_follows_the_queue_bound(queue_mib: int) -> None:
    config = ModelTapConfig(monitor="inline", model_name="big", queue_max_bytes=queue_mib * 1024 * 1024)
    worker = pipeline(config)
    worker.process([raw_record(big_body(0))])
    assert worker.pending_bytes <= min(8, queue_mib / 8) * 1024 * 1024 + 3 * 1024 * 1024
