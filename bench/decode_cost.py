#!/usr/bin/env python3
"""Decode cost per exchange on the worker, for the reference body and a 100-row x 30-feature
Open Inference Protocol V2 batch (plus a few other formats), best of 5.

usage: python bench/decode_cost.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import orjson

from modeltap.protocols import ExchangeBytes, decode_exchange


def best_us(call: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        best = min(best, (time.perf_counter() - started) / repeats)
    return best * 1e6


def main() -> None:
    rng = np.random.default_rng(0)
    reference_body = b'{"instances": [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]]}'
    batch = rng.normal(size=(100, 30)).round(4)
    v2_request = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [100, 30], "datatype": "FP64", "data": batch.ravel().tolist()}]}
    )
    v2_response = orjson.dumps(
        {
            "model_name": "m",
            "outputs": [{"name": "y", "shape": [100], "datatype": "FP64", "data": [0.5] * 100}],
        }
    )
    v1_batch = orjson.dumps({"instances": batch.tolist()})
    chat = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hello " * 50}]})
    choice = {"index": 0, "message": {"content": "hi " * 40}, "finish_reason": "stop"}
    usage = {"prompt_tokens": 60, "completion_tokens": 40, "total_tokens": 100}
    chat_response = orjson.dumps({"id": "c1", "model": "m-2024", "choices": [choice], "usage": usage})
    cases = {
        "KServe V1, 1 row x 10 (reference body)": ExchangeBytes(
            "POST", "/predict", reference_body, b'{"predictions": [28.5]}', 200
        ),
        "KServe V1, 100 rows x 30": ExchangeBytes("POST", "/v1/models/m:predict", v1_batch, b"{}", 200),
        "OIP V2, 100 rows x 30 (FP64 tensor)": ExchangeBytes(
            "POST", "/v2/models/m/infer", v2_request, v2_response, 200
        ),
        "OpenAI chat completion": ExchangeBytes("POST", "/v1/chat/completions", chat, chat_response, 200),
    }
    for name, exchange in cases.items():
        repeats = 2000 if len(exchange.request_body) < 4096 else 200
        print(f"{name:42s} {best_us(lambda e=exchange: decode_exchange(e), repeats):8.1f} us per exchange")


if __name__ == "__main__":
    main()
