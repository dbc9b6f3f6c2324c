"""A recommender endpoint for the business-outcome tests: `POST /v1/models/shop:predict` answers
one offer per instance, as the version the client asks for (`x-route-version`, standing in for a
canary router) says in its `x-model-version` header. `monitored_app` wraps it with the middleware
(settings from the environment)."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PREDICT = "/v1/models/shop:predict"


async def predict(request: Request) -> JSONResponse:
    body = await request.json()
    version = request.headers.get("x-route-version", "1")
    offers = [float(sum(row)) for row in body["instances"]]
    return JSONResponse({"predictions": offers}, headers={"x-model-version": version})


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


app = Starlette(routes=[Route(PREDICT, predict, methods=["POST"]), Route("/_ready", ready)])


def monitored_app() -> Any:
    from modeltap import ModelTapMiddleware

    return ModelTapMiddleware(app, model_name="shop")
