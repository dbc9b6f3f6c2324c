"""A small FastAPI model server monitored by modeltap.

A reference profile of its training data first, so drift is measured:

    python examples/fastapi_app.py --write-training-data train.csv
    modeltap profile train.csv -o reference.json --prediction prediction

Run it:  MODELTAP_REFERENCE=reference.json uvicorn examples.fastapi_app:app --port 8080
Then:    curl -s localhost:8080/v1/models/churn:predict -H 'content-type: application/json' \
              -d '{"instances": [[0.1, 2, 3.5, 1]]}'
         curl -s localhost:8080/modeltap/status        (the page: http://localhost:8080/modeltap/)
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
from typing import Any

from fastapi import FastAPI

from modeltap import ModelTapMiddleware

# The four inputs of a row, in order: the reference names them (KServe V1 rows are positional).
FEATURES = ("usage_change", "tenure_years", "satisfaction", "monthly_discount")
WEIGHTS = (0.8, -0.4, 0.25, 1.1)
BIAS = -0.3

app = FastAPI(title="churn model")
app.add_middleware(
    ModelTapMiddleware,
    model_name="churn",
    model_version=os.environ.get("MODEL_VERSION", "1"),
    reference=os.environ.get("MODELTAP_REFERENCE") or None,
)


def _score(row: list[float]) -> float:
    z = BIAS + sum(w * x for w, x in zip(WEIGHTS, row, strict=False))
    return 1.0 / (1.0 + math.exp(-z))


@app.post("/v1/models/{model}:predict")
async def predict(model: str, body: dict[str, Any]) -> dict[str, Any]:
    rows = body.get("instances", [])
    # Missing values are imputed with 0.0, as many production models silently do.
    return {"predictions": [round(_score([0.0 if x is None else float(x) for x in row]), 6) for row in rows]}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def training_rows(count: int = 2000, seed: int = 7) -> list[list[float]]:
    """The table the model was fitted on: one row per customer, the FEATURES in order."""
    rng = random.Random(seed)
    return [
        [
            round(rng.gauss(0.0, 0.5), 3),
            round(rng.gammavariate(2.0, 1.5), 2),
            round(min(5.0, max(1.0, rng.gauss(3.5, 0.8))), 2),
            round(rng.uniform(0.0, 2.0), 2),
        ]
        for _ in range(count)
    ]


def write_training_data(path: str) -> None:
    """The training table with the model's score on each row (`prediction`), as `modeltap profile`
    reads it: the score becomes a monitored output, so prediction drift is measured too."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURES, "prediction"])
        for row in training_rows():
            writer.writerow([*row, round(_score(row), 6)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--write-training-data", metavar="CSV", required=True, help="write the training table"
    )
    write_training_data(parser.parse_args().write_training_data)
