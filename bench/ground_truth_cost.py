"""What ground truth costs the monitor: microseconds per prediction kept and per label joined.

Runs the join store and the performance counts alone (no server), with the store at its default
bounds: a classifier with 3 classes, predictions keyed by request id and row, labels joined in a
shuffled order; then the same for a binary classifier with scores (AUC, CBPE).

    .venv/bin/python bench/ground_truth_cost.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from modeltap.reference import build_profile
from modeltap.reference.document import parse_reference
from modeltap.stats.ground_truth import GroundTruth
from modeltap.worker.feedback import join_key


def measure(truth: GroundTruth, rows: int, scores: bool) -> tuple[float, float]:
    rng = random.Random(1)
    classes = ["a", "b", "c"] if not scores else ["0", "1"]
    predicted = [rng.choice(classes) for _ in range(rows)]
    score_values = [rng.random() for _ in range(rows)] if scores else None
    keys = [join_key(None, f"req-{i // 8}", i % 8, None) for i in range(rows)]
    started = time.perf_counter()
    for start in range(0, rows, 8):  # one exchange of 8 rows at a time, as the worker hands them
        truth.add_predictions(
            "m", "1", keys[start : start + 8], predicted[start : start + 8], 0.0,
            scores=score_values[start : start + 8] if score_values else None,
        )  # fmt: skip
    kept = (time.perf_counter() - started) / rows
    order = list(range(rows))
    rng.shuffle(order)
    started = time.perf_counter()
    for i in order:
        truth.add_label(None, keys[i], rng.choice(classes), 1.0)
    joined = (time.perf_counter() - started) / rows
    return kept * 1e6, joined * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.choice(["a", "b", "c"], 3000)
    classifier = parse_reference(
        build_profile(
            {"x": rng.normal(size=3000), "y": labels, "p": labels}, target="y", prediction="p", model_name="m"
        )
    )
    binary = rng.choice(["0", "1"], 3000)
    probability = rng.random(3000)
    scored = parse_reference(
        build_profile(
            {"x": rng.normal(size=3000), "y": binary, "p": binary, "s": probability},
            target="y", prediction="p", score="s", positive_class="1", model_name="m",
        )
    )  # fmt: skip
    for name, profile, scores in (("classifier", classifier, False), ("binary + scores", scored, True)):
        truth = GroundTruth(profile, slots=15, slot_s=60.0, default_model="m")
        kept, joined = measure(truth, args.rows, scores)
        print(
            f"{name:<16} {kept:6.2f} us per prediction kept, {joined:6.2f} us per label joined "
            f"({args.rows} rows)"
        )


if __name__ == "__main__":
    main()
