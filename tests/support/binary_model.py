"""A well-specified, calibrated binary classifier for the ground-truth tests.

P(y = 1 | x) = sigmoid(1.5 x1 - x2 - 0.2): the model answers exactly that probability (`scores`)
and the class it implies (`predictions`, "1" above 0.5), KServe V1 rows as objects. `app` is
bare; `monitored_app` is inside ModelTapMiddleware configured by MODELTAP_* variables.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

WEIGHTS = (1.5, -1.0)
BIAS = -0.2


def probability(row: dict[str, float]) -> float:
    z = WEIGHTS[0] * row["x1"] + WEIGHTS[1] * row["x2"] + BIAS
    return 1.0 / (1.0 + math.exp(-z))


def rows(n: int, mean: tuple[float, float], seed: int) -> list[dict[str, float]]:
    x = np.random.default_rng(seed).normal(mean, 1.0, size=(n, 2)).round(4)
    return [{"x1": float(a), "x2": float(b)} for a, b in x]


def labels(batch: list[dict[str, float]], seed: int) -> list[str]:
    """Outcomes drawn from the true model: a covariate shift only, no concept drift."""
    draws = np.random.default_rng(seed).random(len(batch))
    return ["1" if u < probability(row) else "0" for u, row in zip(draws, batch, strict=True)]


async def predict(request: Request) -> JSONResponse:
    body: dict[str, Any] = await request.json()
    scores = [round(probability(row), 6) for row in body["instances"]]
    return JSONResponse({"predictions": ["1" if p > 0.5 else "0" for p in scores], "scores": scores})


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


ROUTES = [Route("/v1/models/risk:predict", predict, methods=["POST"]), Route("/_ready", ready)]
app = Starlette(routes=ROUTES)


def monitored_app() -> Any:
    from modeltap import ModelTapMiddleware

    return ModelTapMiddleware(Starlette(routes=list(ROUTES)), model_name="risk")
