#!/usr/bin/env python3
"""The statistics kernel alone: ns per feature value, and memory per numeric feature.

usage: python bench/kernel.py        (prints one line per configuration; no assertions)

The kernel is what the worker runs per micro-batch for the features of a reference profile:
bucket lookup on each feature's 100 fine reference buckets, one bincount, added into the
cumulative counts and the current window slot (`modeltap.stats.numeric_bank.NumericBank`).
"""

from __future__ import annotations

import time

import numpy as np

from modeltap.stats.numeric_bank import NumericBank


def percentile_edges(column: np.ndarray) -> np.ndarray:
    inner = np.percentile(column, range(1, 100))
    return np.unique(np.concatenate([[np.nextafter(column.min(), -np.inf)], inner, [column.max()]]))


def main() -> None:
    rng = np.random.default_rng(0)
    for features in (10, 100):
        reference = rng.normal(size=(20_000, features))
        names = [f"f{j}" for j in range(features)]
        bank = NumericBank(names, [percentile_edges(c) for c in reference.T], slots=15, slot_s=60.0)
        for rows in (100, 10_000):
            batch = rng.normal(size=(rows, features))
            repeats = max(3, 2_000_000 // (rows * features))
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(repeats):
                    bank.add(batch, 1, time.monotonic())
                best = min(best, (time.perf_counter() - started) / repeats)
            ns_per_value = best / (rows * features) * 1e9
            print(
                f"features={features:4d} rows/batch={rows:6d}  {ns_per_value:7.1f} ns/value  "
                f"{1e3 / ns_per_value:6.1f} M values/s"
            )
        print(f"features={features:4d} memory per numeric feature: {bank.nbytes / features / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
