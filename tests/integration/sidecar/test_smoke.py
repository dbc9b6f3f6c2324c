"""The sidecar forwards a request to a real uvicorn upstream and answers like it."""

from __future__ import annotations

import httpx
import pytest
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


def test_proxy_environment_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # A sidecar that honoured HTTP_PROXY would send the model's traffic to a third party.
    with serve(UPSTREAM) as upstream, serve(COUNTING) as evil:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, evil)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with running_sidecar(upstream) as sidecar:
            answer = httpx.post(
                f"{sidecar.url}/v1/models/m:predict", json={"instances": [[1.0]]}, trust_env=False
            )
        assert answer.status_code == 200
        assert answer.json() == {"predictions": [1.0]}
        assert COUNTED == []


def test_via_is_added_in_both_directions_only_when_asked() -> None:
    with serve(ECHO) as upstream:
        with running_sidecar(upstream, via=True) as sidecar:
            answer = httpx.get(f"{sidecar.url}/echo")
        assert answer.headers["via"] == "1.1 modeltap"
        assert answer.json()["via"] == "1.1 modeltap"
        with running_sidecar(upstream) as sidecar:
            answer = httpx.get(f"{sidecar.url}/echo")
        assert "via" not in answer.headers
        assert answer.json()["via"] is None


COUNTED: list[str] = []


async def count(request: Request) -> JSONResponse:
    COUNTED.append(request.url.path)
    return JSONResponse({})


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"via": request.headers.get("via")})


COUNTING = Starlette(routes=[Route("/{path:path}", count, methods=["GET", "POST"])])
ECHO = Starlette(routes=[Route("/echo", echo)])
