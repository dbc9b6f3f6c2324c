"""A small FastAPI model server monitored by modeltap.

Run it:  uvicorn examples.fastapi_app:app --port 8080
Then:    curl -s localhost:8080/v1/models/churn:predict -H 'content-type: application/json' \
              -d '{"instances": [[0.1, 2, 3.5, 1]]}'
         curl -s localhost:8080/modeltap/status
"""

from __future__ import annotations

import math
import os
from typing import Any

from fastapi import FastAPI

from modeltap import ModelTapMiddleware

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
