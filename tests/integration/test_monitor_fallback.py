"""Process mode falls back to inline analysis, with a log line, where no monitor process can run
(issue "monitor process", item 5): nothing captured so far is lost, and the views keep answering
from the serving process itself."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from modeltap import ModelTapConfig, ModelTapMiddleware
from modeltap.handoff.rendezvous import Rendezvous
from tests.support.polling import wait_until
from tests.support.servers import serve

pytestmark = [pytest.mark.usefixtures("clean_otel_env"), pytest.mark.timeout(60)]


async def model(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": b'{"predictions": [1.0]}'})


def cannot_fork(self: Rendezvous, document: Any, pass_fds: tuple[int, ...] = ()) -> Any:
    raise OSError(11, "Resource temporarily unavailable")


def fails_at_start_up(self: Rendezvous, document: Any, pass_fds: tuple[int, ...] = ()) -> Any:
    return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])


@pytest.mark.parametrize("spawn", [cannot_fork, fails_at_start_up], ids=["cannot-fork", "exits-at-start"])
def test_no_monitor_means_inline_analysis_and_nothing_lost(
    own_monitor: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, spawn: Any
) -> None:
    monkeypatch.setattr(Rendezvous, "spawn_monitor", spawn)
    middleware = ModelTapMiddleware(model, config=ModelTapConfig.from_env(), model_name="m")
    try:
        with (
            caplog.at_level(logging.WARNING, logger="modeltap"),
            serve(middleware) as url,
            httpx.Client(base_url=url, timeout=10.0) as client,
        ):
            for _ in range(12):
                assert (
                    client.post("/v1/models/m:predict", content=b'{"instances": [[1.0]]}').status_code == 200
                )
            assert wait_until(lambda: middleware.tap.mode == "inline", timeout_s=15.0)
            for _ in range(8):
                assert (
                    client.post("/v1/models/m:predict", content=b'{"instances": [[1.0]]}').status_code == 200
                )
            assert middleware.tap.flush(5.0)
            status = client.get("/modeltap/status").json()
    finally:
        middleware.tap.shutdown()
    assert status["monitoring"]["mode"] == "inline"
    assert status["requests"]["total"] == 20  # those queued before the fallback too
    assert status["dropped"].get("monitor_unavailable", 0) == 0
    assert any("analysing in this process instead" in r.getMessage() for r in caplog.records)
