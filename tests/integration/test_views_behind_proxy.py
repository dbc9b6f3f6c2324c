"""The local views under a real uvicorn that trusts forwarding headers (`--forwarded-allow-ips='*'`):
uvicorn's ProxyHeadersMiddleware then rewrites the peer address from `X-Forwarded-For`, so a remote
client could claim to be 127.0.0.1. The views take a loopback peer as local only when the request
carries no forwarding header; otherwise the token (or an allow-listed network) is required, and the
403 says how to grant access."""

from __future__ import annotations

import httpx

from modeltap import ModelTapConfig, ModelTapMiddleware
from tests.support.asgi_driver import Receive, Scope, Send
from tests.support.servers import serve
from tests.support.sidecar import running_sidecar

TOKEN = "views-s3cret"


async def model_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": b'{"predictions": [1]}'})


def test_views_behind_a_forwarding_proxy_need_the_token() -> None:
    app = ModelTapMiddleware(
        model_app, config=ModelTapConfig.from_env({}, monitor="inline"), model_name="churn", views_token=TOKEN
    )
    try:
        with (
            serve(app, "uvicorn-forwarded", forwarded_allow_ips="*", lifespan="off") as url,
            httpx.Client(base_url=url, timeout=10.0) as client,
        ):
            spoofed = client.get("/modeltap/status", headers={"X-Forwarded-For": "127.0.0.1"})
            page = client.get("/modeltap/", headers={"X-Forwarded-For": "127.0.0.1"})
            with_token = client.get(
                "/modeltap/status",
                headers={"X-Forwarded-For": "127.0.0.1", "Authorization": f"Bearer {TOKEN}"},
            )
            plain_loopback = client.get("/modeltap/status")
            metrics = client.get("/modeltap/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
    finally:
        app.tap.shutdown()

    assert spoofed.status_code == 403
    assert page.status_code == 403
    assert metrics.status_code == 403
    assert "MODELTAP_VIEWS_TOKEN" in spoofed.text
    assert "Authorization: Bearer" in spoofed.text
    assert "MODELTAP_VIEWS_ALLOW" in spoofed.text
    assert with_token.status_code == 200
    assert with_token.json()["model"]["name"] == "churn"
    assert plain_loopback.status_code == 200


def test_without_a_token_a_forwarded_request_is_refused_and_told_what_to_set() -> None:
    app = ModelTapMiddleware(
        model_app, config=ModelTapConfig.from_env({}, monitor="inline"), model_name="churn"
    )
    try:
        with (
            serve(app, "uvicorn-forwarded", forwarded_allow_ips="*", lifespan="off") as url,
            httpx.Client(base_url=url, timeout=10.0) as client,
        ):
            forwarded = client.get("/modeltap/status", headers={"Forwarded": "for=127.0.0.1"})
            real_ip = client.get("/modeltap/status", headers={"X-Real-IP": "127.0.0.1"})
            plain_loopback = client.get("/modeltap/status")
    finally:
        app.tap.shutdown()

    assert forwarded.status_code == 403
    assert real_ip.status_code == 403
    assert "views_token" in forwarded.text
    assert plain_loopback.status_code == 200


def test_the_sidecar_admin_port_with_a_token_applies_the_same_rule(unused_tcp_port: int) -> None:
    """With `MODELTAP_VIEWS_TOKEN` set, the admin port's views answer plain loopback requests and
    token holders; a forwarded request needs the token. The probes never need it."""
    monitoring = ModelTapConfig.from_env({"MODELTAP_VIEWS_TOKEN": TOKEN}, monitor="inline", views_prefix=None)
    with (
        running_sidecar(f"http://127.0.0.1:{unused_tcp_port}", monitoring) as sidecar,
        httpx.Client(base_url=sidecar.admin_url, timeout=10.0) as client,
    ):
        forwarded = client.get("/status", headers={"X-Forwarded-For": "127.0.0.1"})
        with_token = client.get(
            "/status", headers={"X-Forwarded-For": "127.0.0.1", "Authorization": f"Bearer {TOKEN}"}
        )
        plain_loopback = client.get("/status")
        probe = client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.9"})

    assert forwarded.status_code == 403
    assert "MODELTAP_VIEWS_TOKEN" in forwarded.text
    assert with_token.status_code == 200
    assert plain_loopback.status_code == 200
    assert probe.status_code == 200
