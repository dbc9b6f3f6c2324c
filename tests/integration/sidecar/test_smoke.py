"""The sidecar forwards a request to a real uvicorn upstream and answers like it."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.servers import serve
from tests.support.sidecar import running_sidecar


async def predict(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"predictions": [sum(row) for row in body["instances"]]})


UPSTREAM = Starlette(routes=[Route("/v1/models/m:predict", predict, methods=["POST"])])


def test_forwards_and_answers_like_the_upstream() -> None:
    payload = {"instances": [[1.0, 2.0], [3.0, 4.0]]}
    with serve(UPSTREAM) as upstream, running_sidecar(upstream) as sidecar:
        direct = httpx.post(f"{upstream}/v1/models/m:predict", json=payload)
        proxied = httpx.post(f"{sidecar.url}/v1/models/m:predict", json=payload)
        assert proxied.status_code == direct.status_code == 200
        assert proxied.content == direct.content
        assert proxied.headers["content-type"] == direct.headers["content-type"]
        ready = httpx.get(f"{sidecar.admin_url}/readyz")
        assert ready.status_code == 200
        sidecar.sidecar.tap.flush()
        status = httpx.get(f"{sidecar.admin_url}/status").json()
        assert status["requests"]["total"] == 1
        assert status["proxy_errors"] == {}
