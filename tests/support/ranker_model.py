"""A recommender for the ground-truth tests: each row (a user) gets a ranked list of 5 items.

`monitored_app` runs it inside ModelTapMiddleware with MODELTAP_RANKING_K from the environment."""

from __future__ import annotations

import hashlib
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ITEMS = tuple(f"item-{i}" for i in range(12))


def recommend(user: str) -> list[str]:
    return sorted(ITEMS, key=lambda item: hashlib.sha256(f"{user}/{item}".encode()).hexdigest())[:5]


async def predict(request: Request) -> JSONResponse:
    body: dict[str, Any] = await request.json()
    return JSONResponse({"predictions": [recommend(str(row["user"])) for row in body["instances"]]})


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


ROUTES = [Route("/v1/models/recs:predict", predict, methods=["POST"]), Route("/_ready", ready)]


def monitored_app() -> Any:
    from modeltap import ModelTapMiddleware

    return ModelTapMiddleware(Starlette(routes=list(ROUTES)), model_name="recs")
