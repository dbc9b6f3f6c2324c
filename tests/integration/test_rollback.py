"""The sidecar's rollback switch (issue "alerts that act", item 4), with real processes: the
operator's `POST /rollback` moves traffic to the fallback upstream under load with no failed
request, a request in flight finishes where it started, the switch and its cause are in
`/status`, the log and a notification, it survives the monitor's death, and `POST
/rollback/cancel` moves traffic back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.backends import wait_for
from tests.support.servers import serve
from tests.support.sidecar_process import SidecarProcess, sidecar_process
from tests.support.webhook import Webhook, webhook

pytestmark = pytest.mark.timeout(120)
PREDICT = "/v1/models/churn:predict"


def model_server(name: str, version: str) -> Starlette:
    """A model server that says who answered; `/slow` answers after 1.5 s."""

    async def predict(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"served_by": name}, headers={"x-model-version": version})

    async def slow(request: Request) -> JSONResponse:
        await asyncio.sleep(1.5)
        return JSONResponse({"served_by": name}, headers={"x-model-version": version})

    return Starlette(routes=[Route(PREDICT, predict, methods=["POST"]), Route("/slow", slow)])


class Load:
    """Two clients sending requests back to back until stopped; every answer is kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[float, int, str]] = []  # (monotonic time sent, status, served_by)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    response = client.post(self.url + PREDICT, json={"instances": [[1.0, 2.0]]})
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                self.answers.append((sent, response.status_code, response.json().get("served_by", "")))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


@contextlib.contextmanager
def sidecar_with_fallback(
    tmp_path: Path, *args: str, env: dict[str, str]
) -> Iterator[tuple[Webhook, SidecarProcess, str]]:
    """(a webhook receiver, the sidecar, the fallback's URL): the sidecar in front of a primary
    answering as version 2, with a fallback answering as version 1, notifying the receiver."""
    with (
        webhook() as hook,
        serve(model_server("primary", "2"), "uvicorn-primary") as primary,
        serve(model_server("fallback", "1"), "uvicorn-fallback") as fallback,
        sidecar_process(
            primary,
            tmp_path,
            "--fallback-upstream",
            fallback,
            "--alert-webhook",
            hook.url,
            *args,
            env=env,
        ) as sidecar,  # fmt: skip
    ):
        yield hook, sidecar, fallback


def _status(admin: str) -> dict[str, Any]:
    return httpx.get(admin + "/status", timeout=5).json()  # type: ignore[no-any-return]


def test_the_operators_rollback_moves_traffic_with_no_failed_request(tmp_path: Path) -> None:
    with (
        sidecar_with_fallback(tmp_path, env={"MODELTAP_MODEL_NAME": "churn"}) as (hook, sidecar, fallback),
        Load(sidecar.url) as load,
    ):
        admin = sidecar.admin_url
        assert wait_for(lambda: len(load.answers) >= 200, 20)
        assert wait_for(lambda: (_status(admin)["rollback"] or {}).get("active") is False, 10)

        # What each process costs: the sidecar's data plane (its counts) and its monitor (itself).
        def roles() -> dict[str, int]:
            return {r["role"]: r["pid"] for r in _status(admin)["resources"]}

        assert wait_for(lambda: set(roles()) == {"serving", "monitor"}, 10), roles()
        assert roles() == {"serving": sidecar.process.pid, "monitor": _status(admin)["process"]["pid"]}

        # The data plane probes its event loop (the lag travels with its counts); the monitor
        # serves no requests, so it has no loop lag.
        def loop_lag() -> dict[str, float | None]:
            return {r["role"]: r["event_loop_lag_max_s"] for r in _status(admin)["resources"]}

        assert wait_for(lambda: loop_lag().get("serving") is not None, 10), loop_lag()
        assert loop_lag()["monitor"] is None
        # A request in flight when the switch turns finishes where it started.
        slow: list[httpx.Response] = []
        in_flight = threading.Thread(target=lambda: slow.append(httpx.get(sidecar.url + "/slow", timeout=10)))
        in_flight.start()
        time.sleep(0.3)

        rolling = time.monotonic()
        answer = httpx.post(admin + "/rollback", json={"cause": "version 2 misbehaves"}, timeout=10)
        switched = time.monotonic()
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "target": "fallback",
            "fallback_upstream": fallback,
            "cause": "version 2 misbehaves",
            "by": "operator",
            "applied": True,
            "processes": 1,
            "on_fallback": 1,
        }
        assert wait_for(lambda: sum(1 for sent, _, _ in load.answers if sent > switched) >= 200, 20)
        in_flight.join(10)
        assert [(r.status_code, r.json()["served_by"]) for r in slow] == [(200, "primary")]

        status = _status(admin)["rollback"]
        assert status["active"] is True
        assert (status["cause"], status["by"], status["requested"]) == (
            "version 2 misbehaves",
            "operator",
            "fallback",
        )
        assert status["since_unix_s"] == pytest.approx(time.time(), abs=30)

        # The monitor dies: the switch stays where it is (the data plane owns it).
        monitor = int(_status(admin)["process"]["pid"])
        os.kill(monitor, signal.SIGKILL)

        def restarted_and_rolled_back() -> bool:
            document = _status(admin)
            return (
                document["process"]["pid"] != monitor and (document["rollback"] or {}).get("active") is True
            )

        assert wait_for(restarted_and_rolled_back, 30)
        # The new monitor took the data plane's state as its own request (a data plane that
        # restarts later is moved too).
        assert _status(admin)["rollback"]["requested"] == "fallback"

        cancelling = time.monotonic()
        cancelled = httpx.post(admin + "/rollback/cancel", timeout=10)
        back = time.monotonic()
        assert cancelled.status_code == 200, cancelled.text
        assert (cancelled.json()["target"], cancelled.json()["on_fallback"]) == ("primary", 0)
        assert wait_for(lambda: sum(1 for sent, _, _ in load.answers if sent > back) >= 100, 20)
        # The notification of the cancel leaves from the monitor's sender thread: let it arrive.
        assert wait_for(lambda: any(n.get("kind") == "rollback_cancelled" for n in hook.received), 10)

    # Not one failed request; before the switch only the primary answered, after it only the
    # fallback, after the cancel only the primary again.
    assert load.errors == []
    assert Counter(status for _, status, _ in load.answers) == {200: len(load.answers)}
    assert {who for sent, _, who in load.answers if sent < rolling} == {"primary"}
    assert {who for sent, _, who in load.answers if switched < sent < cancelling} == {"fallback"}
    assert {who for sent, _, who in load.answers if sent > back} == {"primary"}
    # The log and the notifications say so.
    assert "rolled back: new requests go to" in sidecar.stderr
    kinds = [(n["kind"], n["rollback"]["cause"]) for n in hook.received if "rollback" in n]
    assert kinds == [
        ("rollback", "version 2 misbehaves"),
        ("rollback_cancelled", "cancelled by the operator"),
    ]
    # The version rolled back from is the one that was answering (no version is configured).
    # The cancel came from the monitor that took over after the kill: it cannot know which.
    assert [n["version"] for n in hook.received if "rollback" in n] == ["2", "unknown"]


def test_inline_the_analysis_in_the_data_plane_serves_the_switch(tmp_path: Path) -> None:
    """With the analysis in the data plane (`MODELTAP_MONITOR=inline`), the admin port is served
    there, wired to it once it starts: `POST /rollback` moves traffic with no failed request, and
    the notification leaves from the data plane."""
    env = {"MODELTAP_MODEL_NAME": "churn", "MODELTAP_MONITOR": "inline"}
    with sidecar_with_fallback(tmp_path, env=env) as (hook, sidecar, fallback), Load(sidecar.url) as load:
        admin = sidecar.admin_url
        assert wait_for(lambda: len(load.answers) >= 100, 20)
        document = _status(admin)
        assert document["monitoring"]["mode"] == "inline"
        assert [(r["role"], r["pid"]) for r in document["resources"]] == [("serving", sidecar.process.pid)]
        answer = httpx.post(admin + "/rollback", json={"cause": "inline check"}, timeout=10)
        switched = time.monotonic()
        assert answer.status_code == 200, answer.text
        taken = answer.json()
        assert (taken["target"], taken["fallback_upstream"], taken["applied"]) == ("fallback", fallback, True)
        assert wait_for(lambda: sum(1 for sent, _, _ in load.answers if sent > switched) >= 100, 20)
        # `/status` is a snapshot (published every half second): it shows the switch soon after.
        assert wait_for(lambda: (_status(admin)["rollback"] or {}).get("active") is True, 10)
        assert wait_for(lambda: any(n.get("kind") == "rollback" for n in hook.received), 10)
    assert load.errors == []
    assert Counter(status for _, status, _ in load.answers) == {200: len(load.answers)}
    assert {who for sent, _, who in load.answers if sent > switched} == {"fallback"}


def test_without_a_fallback_the_switch_is_refused(tmp_path: Path) -> None:
    with serve(model_server("primary", "2")) as primary, sidecar_process(primary, tmp_path) as sidecar:
        answer = httpx.post(sidecar.admin_url + "/rollback", timeout=10)
        assert answer.status_code == 409
        assert "--fallback-upstream" in answer.json()["error"]
        assert _status(sidecar.admin_url)["rollback"] is None
        # Write endpoints: from the machine itself (no forwarding header) or with the token.
        forwarded = httpx.post(
            sidecar.admin_url + "/rollback", headers={"x-forwarded-for": "203.0.113.7"}, timeout=10
        )
        assert forwarded.status_code == 403
