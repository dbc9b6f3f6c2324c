"""A small real model server for the demo: logistic regression trained at start-up.

The data set is synthetic but shaped like a churn table (tenure, monthly charges, support calls,
age, discount; the label `churned`), generated with a fixed seed so every run trains the same
model and nothing is downloaded. The server speaks KServe V1 (`POST /v1/models/churn:predict`
with `{"instances": [[...5 numbers...]]}`, answering `{"predictions": [1, 0, ...], "scores": [p,
...]}`: per row the class it predicts (1 = churns, when p > 0.5) and the churn probability p) and
names its version in the `x-model-version` header.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FEATURES = ("tenure_months", "monthly_charges", "support_calls", "age", "discount_pct")
LABEL = "churned"
# The KServe V1 decoder names a flat `predictions` list "prediction" (role output) and a per-row
# array beside it by its key: the predicted class and the churn probability.
PREDICTION = "prediction"
SCORE = "scores"
MODEL_NAME = "churn"
MODEL_VERSION = "1"
NEW_VERSION = "2"
ROUTE_HEADER = "x-route-version"  # the demo's stand-in for a canary router
PREDICT_PATH = f"/v1/models/{MODEL_NAME}:predict"


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


def churn_labels(x: np.ndarray, seed: int) -> np.ndarray:
    """Who churns: a logistic function of the features plus noise (1.0 = churned)."""
    rng = np.random.default_rng(seed + 1)
    logit = -2.0 - 0.12 * x[:, 0] + 0.06 * x[:, 1] + 1.0 * x[:, 2] - 0.02 * x[:, 3] - 0.1 * x[:, 4]
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

    def scores(self, x: np.ndarray) -> list[float]:
        """The churn probabilities the server answers, rounded to 6 digits."""
        return [round(float(s), 6) for s in self.predict_proba(x)]

    def answer(self, x: np.ndarray) -> dict[str, list[int] | list[float]]:
        """The response body: the predicted class (1 = churns) and its probability, per row."""
        scores = self.scores(x)
        return {"predictions": [int(s > 0.5) for s in scores], "scores": scores}


def training_data(rows: int = 5000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    x = make_customers(rows, seed)
    return x, churn_labels(x, seed)


def validation_data(rows: int = 5000, seed: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Customers held out of training, from the same population: the reference profile's rows
    (the model's accuracy on them is the baseline; on its training rows it would look better)."""
    return training_data(rows, seed)


def write_training_csv(path: str | Path, x: np.ndarray, y: np.ndarray, model: ChurnModel) -> None:
    """A labelled table as the model's owner would have it: features, label, and the model's
    answer (its predicted class and churn probability)."""
    answer = model.answer(x)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURES, LABEL, PREDICTION, SCORE])
        for row, label, predicted, score in zip(
            x.tolist(), y.tolist(), answer["predictions"], answer["scores"], strict=True
        ):
            tenure, charges, calls, age, discount = row
            writer.writerow(
                [
                    f"{tenure:.2f}",
                    f"{charges:.2f}",
                    int(calls),
                    f"{age:.1f}",
                    f"{discount:.2f}",
                    int(label),
                    predicted,
                    score,
                ]
            )


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
        # Two versions behind one route, as a canary router would place them: the request says
        # which one answers (version 2 is a new release with the same decisions).
        version = NEW_VERSION if request.headers.get(ROUTE_HEADER) == NEW_VERSION else MODEL_VERSION
        return JSONResponse(model.answer(x), headers={"x-model-version": version})

    async def health(request: Request) -> Response:
        return Response("ok")

    return Starlette(
        routes=[
            Route("/v1/models/{model}:predict", predict, methods=["POST"]),
            Route("/health", health),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """`python -m modeltap.demo.model_server`: the demo's model alone, to put a sidecar in front of."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m modeltap.demo.model_server",
        description="Train the demo's churn model and serve it (KServe V1) without monitoring.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument(
        "--write-training-data",
        metavar="CSV",
        default=None,
        help="also write the training table (features, churned, prediction, scores) to this CSV file",
    )
    args = parser.parse_args(argv)
    x, y = training_data()
    model = ChurnModel.train(x, y)
    if args.write_training_data:
        write_training_csv(args.write_training_data, x, y, model)
        print(f"training data written to {args.write_training_data}", flush=True)
    print(f"churn model: POST http://{args.host}:{args.port}{PREDICT_PATH}", flush=True)
    uvicorn.run(build_app(model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":  # pragma: no cover
    main()
