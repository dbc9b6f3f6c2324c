"""A small real model server for the demo: logistic regression trained at start-up.

The data set is synthetic but shaped like a churn table (tenure, monthly charges, support calls,
age, discount), generated with a fixed seed so every run trains the same model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FEATURES = ("tenure_months", "monthly_charges", "support_calls", "age", "discount_pct")
MODEL_NAME = "churn"
MODEL_VERSION = "1"


def make_customers(rows: int, seed: int, *, shift: dict[str, float] | None = None) -> np.ndarray:
    """Draw customers; `shift` moves a feature's mean by that many standard deviations."""
    rng = np.random.default_rng(seed)
    columns = {
        "tenure_months": rng.gamma(2.0, 12.0, rows),
        "monthly_charges": rng.normal(70.0, 20.0, rows),
        "support_calls": rng.poisson(1.5, rows).astype(np.float64),
        "age": rng.normal(45.0, 12.0, rows),
        "discount_pct": rng.uniform(0.0, 20.0, rows),
    }
    for name, sigma in (shift or {}).items():
        columns[name] = columns[name] + sigma * float(np.std(columns[name]))
    return np.column_stack([columns[name] for name in FEATURES])


def _churn_labels(x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    logit = -1.0 - 0.06 * x[:, 0] + 0.03 * x[:, 1] + 0.5 * x[:, 2] - 0.01 * x[:, 3] - 0.05 * x[:, 4]
    return (rng.random(len(x)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float64)


@dataclass(frozen=True)
class ChurnModel:
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    @classmethod
    def train(cls, x: np.ndarray, y: np.ndarray, steps: int = 400, learning_rate: float = 0.5) -> ChurnModel:
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
        z = (x - mean) / scale
        w = np.zeros(z.shape[1])
        b = 0.0
        for _ in range(steps):  # plain gradient descent on the log loss
            p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
            w -= learning_rate * z.T @ (p - y) / len(y)
            b -= learning_rate * float(np.mean(p - y))
        return cls(mean, scale, w, b)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = (np.nan_to_num(x, nan=0.0) - self.mean) / self.scale
        result: np.ndarray = 1.0 / (1.0 + np.exp(-(z @ self.weights + self.bias)))
        return result


def training_data(rows: int = 5000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    x = make_customers(rows, seed)
    return x, _churn_labels(x, seed)


def build_app(model: ChurnModel) -> Starlette:
    """A KServe V1 endpoint: POST /v1/models/churn:predict {"instances": [[...5 numbers...]]}."""

    async def predict(request: Request) -> Response:
        try:
            body = await request.json()
            x = np.asarray(body["instances"], dtype=np.float64)
            if x.ndim != 2 or x.shape[1] != len(FEATURES):
                raise ValueError(f"expected rows of {len(FEATURES)} features")
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse(
                {"error": str(exc)}, status_code=400, headers={"x-model-version": MODEL_VERSION}
            )
        scores = model.predict_proba(x)
        return JSONResponse(
            {"predictions": [round(float(s), 6) for s in scores]},
            headers={"x-model-version": MODEL_VERSION},
        )

    async def health(request: Request) -> Response:
        return Response("ok")

    return Starlette(
        routes=[
            Route("/v1/models/{model}:predict", predict, methods=["POST"]),
            Route("/health", health),
        ]
    )
