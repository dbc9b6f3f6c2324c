"""A recommender endpoint for the business-outcome tests: `POST /v1/models/shop:predict` answers
one offer per instance, as the version the client asks for (`x-route-version`, standing in for a
canary router) says in its `x-model-version` header. `monitored_app` wraps it with the middleware
(settings from the environment) and adds `POST /checkout`, which reports an order through
`modeltap.outcome` from inside the server."""

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


async def checkout(request: Request) -> JSONResponse:
    """An in-process outcome producer (a checkout handler): hands the order to `modeltap.outcome`."""
    import asyncio

    import modeltap

    body = await request.json()
    answers = []
    for name, value in (("conversion", 1), ("order_value", body["amount"])):
        answers.append(
            await asyncio.to_thread(modeltap.outcome, request_id=body["request_id"], name=name, value=value)
        )
    return JSONResponse(answers)


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


app = Starlette(routes=[Route(PREDICT, predict, methods=["POST"]), Route("/_ready", ready)])


def monitored_app() -> Any:
    from modeltap import ModelTapMiddleware

    routes = [*app.routes, Route("/checkout", checkout, methods=["POST"])]
    return ModelTapMiddleware(Starlette(routes=routes), model_name="shop")
