"""The sidecar as two processes (issue "monitor process", item 3): the data plane proxies and
captures, the monitor analyses and serves the admin port; `--workers N` data planes share the
proxy port and one monitor. Real `modeltap sidecar` processes, a real uvicorn upstream, a real
OTLP receiver.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modeltap.config import ExportConfig
from modeltap.reference import build_profile, write_profile
from modeltap.sidecar.supervisor import FAILING_START_S
from tests.support.otlp_receiver import OtlpHttpReceiver
from tests.support.polling import wait_until
from tests.support.servers import serve
from tests.support.sidecar_process import SidecarProcess, sidecar_process

pytestmark = [pytest.mark.usefixtures("clean_otel_env"), pytest.mark.timeout(120)]

PREDICT = "/v1/models/churn:predict"
BODY = b'{"instances": [[1.0, 2.0, 3.0]]}'
ANSWER = b'{"predictions": [6.0], "model_version": "v1"}'
FLUSH_S = ExportConfig().shutdown_timeout_s


async def model(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


@pytest.fixture
def upstream() -> Any:
    with serve(model, name="monitor-process-upstream") as url:
        yield url


@pytest.fixture
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="mt-"))  # short: Unix socket paths are limited


def environment(run_dir: Path, receiver: OtlpHttpReceiver | None = None) -> dict[str, str]:
    env = {"MODELTAP_RUN_DIR": str(run_dir)}
    if receiver is not None:
        env.update(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_TRACES_SAMPLER": "always_on",
                "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # only the final flush exports
                "OTEL_BSP_SCHEDULE_DELAY": "600000",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "2000",
            }
        )
    return env


def status(sidecar: SidecarProcess) -> dict[str, Any]:
    response = httpx.get(f"{sidecar.admin_url}/status", timeout=10.0, trust_env=False)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def settled(sidecar: SidecarProcess, total: int) -> dict[str, Any]:
    """The status once the monitor has counted `total` requests (they are shipped within ms)."""
    documents: list[dict[str, Any]] = []

    def counted() -> bool:
        documents.append(status(sidecar))
        return bool(documents[-1]["requests"]["total"] >= total)

    wait_until(counted, timeout_s=15.0, interval_s=0.1)
    return documents[-1]


def send(sidecar: SidecarProcess, count: int) -> None:
    with httpx.Client(base_url=sidecar.url, timeout=10.0, trust_env=False) as client:
        for _ in range(count):
            response = client.post(PREDICT, content=BODY)
            assert (response.status_code, response.content) == (200, ANSWER)


def monitor_pid(document: dict[str, Any]) -> int:
    assert document["monitoring"]["mode"] == "process"
    pid = int(document["process"]["pid"])
    assert pid not in document["monitoring"]["feeders"]
    return pid


def test_the_monitor_serves_the_admin_port_and_counts_the_data_plane(
    upstream: str, run_dir: Path, tmp_path: Path
) -> None:
    # Full monitoring: a reference profile, so the monitor works out drift scores with SciPy.
    reference = tmp_path / "reference.json"
    rows = np.random.default_rng(7).normal(size=(500, 3))
    write_profile(build_profile(rows, names=["a", "b", "c"]), reference)
    with sidecar_process(
        upstream, tmp_path, "--reference", str(reference), env=environment(run_dir)
    ) as sidecar:
        send(sidecar, 40)
        document = settled(sidecar, 40)
        metrics = httpx.get(f"{sidecar.admin_url}/metrics", timeout=10.0).text
        ready = httpx.get(f"{sidecar.admin_url}/readyz", timeout=10.0)
        # The analysis's compiled libraries (SciPy; gRPC for OTLP over gRPC) are the monitor's alone.
        data_plane = compiled_libraries(sidecar.process.pid)
        monitor = compiled_libraries(monitor_pid(document))
    assert [f["name"] for f in document["features"] if f["role"] == "input"] == ["a", "b", "c"]
    assert document["requests"]["total"] == 40
    assert document["monitoring"]["feeders"] == [sidecar.process.pid]
    assert monitor_pid(document) != sidecar.process.pid
    assert "modeltap_proxy_errors_total" in metrics
    assert ready.status_code == 200
    assert "scipy" in monitor
    assert not {"scipy", "grpc"} & data_plane, data_plane


def compiled_libraries(pid: int) -> set[str]:
    """The top-level packages whose compiled modules a process has mapped (its /proc maps)."""
    packages = set()
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            path = line.split(maxsplit=5)[-1].strip()
            if "/site-packages/" in path and path.endswith(".so"):
                packages.add(path.split("/site-packages/", 1)[1].split("/", 1)[0])
    return packages


def test_a_killed_monitor_comes_back_and_the_gap_is_counted(
    upstream: str, run_dir: Path, tmp_path: Path
) -> None:
    failures: list[str] = []
    sent = [0]
    stop = threading.Event()

    def traffic(sidecar: SidecarProcess) -> None:
        with httpx.Client(base_url=sidecar.url, timeout=10.0, trust_env=False) as client:
            while not stop.is_set():
                response = client.post(PREDICT, content=BODY)
                sent[0] += 1
                if (response.status_code, response.content) != (200, ANSWER):
                    failures.append(f"{response.status_code} {response.content!r}")

    with sidecar_process(upstream, tmp_path, env=environment(run_dir)) as sidecar:
        send(sidecar, 5)
        first = monitor_pid(settled(sidecar, 5))
        # Killed under load: records in flight die with it.
        thread = threading.Thread(target=traffic, args=(sidecar,), daemon=True)
        thread.start()
        time.sleep(0.5)
        os.kill(first, signal.SIGKILL)
        time.sleep(1.0)
        stop.set()
        thread.join(10)
        second = _new_monitor(sidecar, first)
        under_load = _stable(sidecar)
        # Killed when quiet (everything acknowledged): what follows reaches the next one, all of it.
        time.sleep(0.6)
        os.kill(second, signal.SIGKILL)
        send(sidecar, 25)
        third = _new_monitor(sidecar, second)
        quiet = _stable(sidecar)
    assert failures == []  # the model call never noticed
    assert len({first, second, third}) == 3
    counted = under_load["requests"]["total"]
    lost = under_load["dropped"]["monitor_unavailable"]
    # The second monitor counts what reached it; what the first had not processed when it died is
    # counted as lost (never silently); the rest the first had counted before it died.
    assert counted > 0
    assert counted + lost <= sent[0]
    assert quiet["requests"]["total"] == 25
    assert quiet["dropped"]["monitor_unavailable"] == 0
    # A new monitor starts new cumulative series: its own start time and instance.
    assert quiet["process"]["instance_id"] != under_load["process"]["instance_id"]


def test_probes_queued_while_the_monitor_restarts_find_the_model_ready(
    upstream: str, run_dir: Path, tmp_path: Path
) -> None:
    """The admin port waits in its backlog while a killed monitor is replaced; the new one looks
    at the model before it answers, so the probes that waited get 200, not a 503 that takes a
    pod out of its Service (the shipped manifest fails readiness on one)."""
    with sidecar_process(upstream, tmp_path, env=environment(run_dir)) as sidecar:
        send(sidecar, 3)
        first = monitor_pid(settled(sidecar, 3))
        assert httpx.get(f"{sidecar.admin_url}/readyz", timeout=10.0, trust_env=False).status_code == 200
        os.kill(first, signal.SIGKILL)
        answers: list[int] = []
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            answers.append(
                httpx.get(f"{sidecar.admin_url}/readyz", timeout=20.0, trust_env=False).status_code
            )
            pid = _status_or_none(sidecar)
            if pid is not None and pid != first:
                break
        assert answers, "no probe answered"
        assert set(answers) == {200}, answers


def _new_monitor(sidecar: SidecarProcess, old: int) -> int:
    """The data plane starts a new monitor and hands it the admin port; it answers again."""
    pids: list[int | None] = []

    def answered() -> bool:
        pids.append(_status_or_none(sidecar))
        return pids[-1] is not None and pids[-1] != old

    assert wait_until(answered, timeout_s=20.0, interval_s=0.2)
    pid = pids[-1]
    assert pid is not None
    return pid


def _stable(sidecar: SidecarProcess) -> dict[str, Any]:
    """The status once two reads a second apart agree (everything shipped was processed, and the
    snapshot published after it)."""
    previous = status(sidecar)
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        time.sleep(1.0)
        current = status(sidecar)
        if current["requests"] == previous["requests"] and current["dropped"] == previous["dropped"]:
            return current
        previous = current
    pytest.fail(f"the status did not settle: {previous}")


def _status_or_none(sidecar: SidecarProcess) -> int | None:
    try:
        response = httpx.get(f"{sidecar.admin_url}/status", timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return None
    return int(response.json()["process"]["pid"]) if response.status_code == 200 else None


def test_workers_share_the_port_and_one_monitor(upstream: str, run_dir: Path, tmp_path: Path) -> None:
    sent = 90
    with (
        OtlpHttpReceiver() as receiver,
        sidecar_process(
            upstream,
            tmp_path,
            "--workers",
            "3",
            "--drain-delay-s",
            "0.2",
            env=environment(run_dir, receiver),
        ) as sidecar,
    ):
        # Several connections, so the kernel spreads them over the three data planes.
        threads = [threading.Thread(target=send, args=(sidecar, sent // 6)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        document = settled(sidecar, sent)
        scrapes = [
            httpx.get(f"{sidecar.admin_url}/metrics", timeout=10.0).text.count("\n") for _ in range(10)
        ]
        totals = {status(sidecar)["requests"]["total"] for _ in range(10)}
        sidecar.terminate()
        sidecar.assert_clean_exit(0.2 + 20.0 + FLUSH_S + 4.0)
        receiver.wait_for(lambda r: bool(r.latest_points("http.server.request.duration")), timeout=10.0)
        durations = receiver.latest_points("http.server.request.duration")
        spans = receiver.spans()
    assert len(document["monitoring"]["feeders"]) == 3
    assert totals == {sent}  # every scrape, whichever data plane: the totals of all three
    assert len(set(scrapes)) == 1
    assert sum(point.count or 0 for point in durations) == sent
    assert {str(point.resource["service.instance.id"]) for point in durations} == {
        str(document["process"]["instance_id"])
    }
    assert len(spans) == sent
    assert len({span.span_id for span in spans}) == sent


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_a_monitor_whose_data_plane_died_ends_before_the_supervisor(
    upstream: str, run_dir: Path, tmp_path: Path
) -> None:
    """The data plane that started the monitor dies (it is started again): the monitor goes on,
    adopted by the supervisor, which waits for its last export before it exits. As PID 1 of a
    container, a supervisor that exits first ends the monitor in the middle of it."""
    with (
        OtlpHttpReceiver() as receiver,
        sidecar_process(
            upstream, tmp_path, "--workers", "2", "--drain-delay-s", "0.2", env=environment(run_dir, receiver)
        ) as sidecar,
    ):
        send(sidecar, 20)
        monitor = monitor_pid(settled(sidecar, 20))
        starter = _parent(monitor)
        time.sleep(FAILING_START_S)  # a data plane that dies sooner is taken for one failing to start
        assert starter != sidecar.process.pid  # a data plane started it
        os.kill(starter, signal.SIGKILL)
        assert wait_until(lambda: _parent(monitor) == sidecar.process.pid, timeout_s=10.0)
        assert wait_until(lambda: len(status(sidecar)["monitoring"]["feeders"]) == 2, timeout_s=20.0)
        send(sidecar, 10)
        settled(sidecar, 30)
        sidecar.terminate()
        sidecar.assert_clean_exit(0.2 + 20.0 + FLUSH_S + 4.0)
        with pytest.raises(ProcessLookupError):
            os.kill(monitor, 0)  # exited, and reaped by the supervisor before it exited
        receiver.wait_for(lambda r: bool(r.latest_points("http.server.request.duration")), timeout=10.0)
        durations = receiver.latest_points("http.server.request.duration")
    assert sum(point.count or 0 for point in durations) == 30


def test_workers_need_the_monitor_process(upstream: str, run_dir: Path, tmp_path: Path) -> None:
    env = {**environment(run_dir), "MODELTAP_MONITOR": "inline"}
    with (
        pytest.raises(AssertionError, match="needs the monitor process"),
        sidecar_process(upstream, tmp_path, "--workers", "2", env=env),
    ):
        pass
