"""The monitor process with real servers (issue "monitor process", its "Done when").

Every server here is a real process tree started in a session of its own: `uvicorn --workers 3`,
gunicorn with uvicorn workers (with and without `--preload`) or a single uvicorn, serving the
Starlette app of `tests/support/server_process.py` wrapped by `ModelTapMiddleware` in process
mode, with real sockets on 127.0.0.1 and a real OTLP/HTTP receiver. The tests assert what the
design guarantees:

* one monitor per server: every worker's `/modeltap/status` reports exactly the N requests sent,
  lists the feeding workers and names the monitor's pid; `/modeltap/metrics` gives the same totals
  on successive scrapes, whichever worker answers; OTLP carries them under one resource;
* SIGTERM of the server's process group: server and monitor exit within bounds, and the
  receiver's final cumulative count and spans number exactly N (everything flushed once);
* kill -9 of the monitor under load: no request fails, a new monitor comes back, and every
  exchange is accounted for exactly (counted by the old monitor before it died, by the new one,
  or as dropped);
* the monitor leaves within seconds of its server and removes its sockets; a stale socket does
  not stop the next one; an unsafe run directory means inline mode, logged;
* hostile traffic does not grow the serving process past its hand-off buffer;
* the monitor's payload stride reaches every worker within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modeltap.capture import compiled
from modeltap.handoff.shipper import SEND_TIMEOUT_S
from modeltap.reference import build_profile, write_profile
from tests.support.otlp_receiver import OtlpHttpReceiver, flatten_metrics
from tests.support.polling import wait_until
from tests.support.server_process import (
    PipelinedLoad,
    RunningServer,
    alive,
    free_port,
    gunicorn_command,
    otlp_settings,
    post_many,
    rss_bytes,
    running_server,
    server_environment,
    uvicorn_command,
    uvicorn_script_command,
    write_app,
)

pytestmark = [pytest.mark.usefixtures("clean_otel_env"), pytest.mark.timeout(120)]

N = 90
WORKERS = 3
# The design's bound for the monitor's exit after its last serving process left, and the margin
# this shared, 2-core test machine gets on top of it (a deadline, not a performance figure).
MONITOR_EXIT_S = 5.0
MARGIN_S = 3.0
EXCHANGE_DROPS = ("queue_full", "queue_bytes", "monitor_unavailable")


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A private (0700) run directory, short enough for Unix socket paths."""
    directory = Path(tempfile.mkdtemp(prefix="mt-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def app_file(tmp_path: Path) -> Path:
    return write_app(tmp_path)


@pytest.fixture
def receiver() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as rx:
        yield rx


# ---- reading the views ---------------------------------------------------------------------------


def fresh_client(server: RunningServer) -> httpx.Client:
    """A client that opens a new connection for every request (so the kernel hands each one to
    any of the workers) and never reads proxy settings from the environment."""
    return httpx.Client(base_url=server.url, headers={"connection": "close"}, timeout=15.0, trust_env=False)


def statuses_by_worker(
    server: RunningServer, workers: set[int], done: Callable[[dict[str, Any]], bool], timeout_s: float = 30.0
) -> dict[int, dict[str, Any]]:
    """`/modeltap/status` on new connections until every worker's latest answer satisfies `done`
    (or the time is up); the latest document of each worker that answered."""
    latest: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    with fresh_client(server) as client:
        while time.monotonic() < deadline:
            response = client.get("/modeltap/status")
            if response.status_code == 200:  # a 503 while the monitor starts
                latest[int(response.headers["x-worker-pid"])] = response.json()
                if set(latest) == workers and all(done(d) for d in latest.values()):
                    break
            time.sleep(0.01)
    return latest


def status(server: RunningServer) -> dict[str, Any]:
    with fresh_client(server) as client:
        response = client.get("/modeltap/status")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def settled_status(
    server: RunningServer, done: Callable[[dict[str, Any]], bool], timeout_s: float = 20.0
) -> dict[str, Any]:
    """The first `/status` that satisfies `done`, else the last one read."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            document = status(server)
        except (AssertionError, httpx.HTTPError):
            document = {}
        if (document and done(document)) or time.monotonic() > deadline:
            return document
        time.sleep(0.05)


def requests_in_metrics(text: str) -> int:
    """Requests in a Prometheus scrape: the sum of the request-duration histograms' counts."""
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("http_server_request_duration_seconds_count")
    )


def accounted(document: dict[str, Any]) -> int:
    """Exchanges a monitor counted, plus those the serving processes dropped (by any reason)."""
    dropped = document["dropped"]
    return int(document["requests"]["total"]) + sum(int(dropped.get(reason, 0)) for reason in EXCHANGE_DROPS)


# ---- one monitor per server ------------------------------------------------------------------------


def check_one_monitor_for_all_workers(server: RunningServer) -> int:
    """N requests spread over the workers; every worker's views give the totals of all of them.
    Returns the monitor's pid."""
    # The server answers once its first worker is up; gunicorn forks the others a little later.
    assert wait_until(lambda: len(server.worker_pids()) == WORKERS, timeout_s=20.0), server.describe()
    load = PipelinedLoad(server.port, connections=3, reconnect=True)
    load.run(requests=N)
    assert load.failures == []
    assert load.answered == N

    workers = server.worker_pids()
    assert len(workers) == WORKERS, server.describe()
    monitor = server.monitor_pid()
    assert monitor not in workers

    def complete(document: dict[str, Any]) -> bool:
        # A feeder's resources arrive with its counts, a moment after its first records.
        reported = {r["pid"] for r in document["resources"] if r["role"] == "serving"}
        return (
            document["requests"]["total"] == N
            and set(document["monitoring"]["feeders"]) == workers
            and reported == workers
        )

    documents = statuses_by_worker(server, workers, complete)
    assert set(documents) == workers, f"answered by {set(documents)}, workers {workers}"
    for worker, document in documents.items():
        assert document["requests"]["total"] == N, (worker, document["requests"])
        assert sorted(document["monitoring"]["feeders"]) == sorted(workers)
        assert document["monitoring"]["mode"] == "process"
        assert document["process"]["pid"] == monitor
        # Each worker says how it captures: with the compiled request path where it was built.
        serving = {r["pid"]: r["capture"] for r in document["resources"] if r["role"] == "serving"}
        assert serving == dict.fromkeys(workers, "compiled" if compiled.AVAILABLE else "python")
    assert len({d["process"]["instance_id"] for d in documents.values()}) == 1

    # Successive scrapes, answered by any worker, never alternate between workers' counters.
    # (Which worker accepts a connection is the kernel's choice: on a busy machine one may take
    # none of them, so two different workers are enough to show it.)
    scrapes: list[tuple[int, int]] = []
    with fresh_client(server) as client:
        while len(scrapes) < 10 or len({worker for worker, _ in scrapes}) < 2:
            assert len(scrapes) < 300, f"scrapes never reached two workers: {scrapes}"
            response = client.get("/modeltap/metrics")
            assert response.status_code == 200
            scrapes.append((int(response.headers["x-worker-pid"]), requests_in_metrics(response.text)))
    assert {total for _, total in scrapes} == {N}, scrapes
    return monitor


def stop_group_and_check_exit(server: RunningServer, monitor: int, graceful_s: float) -> None:
    """SIGTERM to the server's process group: the supervisor exits within its graceful shutdown,
    the monitor within MONITOR_EXIT_S after it (it waits for its serving processes to leave)."""
    server_s = server.stop(signal.SIGTERM, group=True, timeout_s=graceful_s + MARGIN_S)
    stopped = time.monotonic()
    assert server_s < graceful_s + MARGIN_S
    assert wait_until(lambda: not alive(monitor), MONITOR_EXIT_S + MARGIN_S), server.describe()
    monitor_s = time.monotonic() - stopped
    # Nothing of the group is left. multiprocessing's resource tracker (uvicorn's supervisor
    # starts one) leaves on its own once its parent has gone, reading the end of its pipe: it
    # may still be on its way out here (seen with an empty command line), so give it a moment.
    assert wait_until(lambda: server.processes() == {}, MARGIN_S), server.describe()
    print(f"supervisor exited in {server_s:.2f} s, the monitor {monitor_s:.2f} s after it")


def check_exported_once(receiver: OtlpHttpReceiver, total: int) -> None:
    """The receiver's final cumulative request count and the spans (always_on) number exactly
    `total`, all under one resource: one monitor, everything flushed once."""
    points = receiver.latest_points("http.server.request.duration")
    assert sum(p.count or 0 for p in points) == total, receiver.summary()
    instances = {p.resource.get("service.instance.id") for p in receiver.metrics()}
    assert len(instances) == 1, instances
    # One cumulative series per attribute set: the monitor never restarted.
    starts: dict[str, set[int]] = {}
    for point in receiver.points("http.server.request.duration"):
        key = json.dumps(point.attributes, sort_keys=True, default=str)
        starts.setdefault(key, set()).add(point.start_time_unix_nano)
    assert all(len(s) == 1 for s in starts.values()), starts
    spans = receiver.spans()
    assert len(spans) == total
    assert len({span.span_id for span in spans}) == total
    assert {span.resource.get("service.instance.id") for span in spans} == instances


@pytest.mark.parametrize("started_by", ["uvicorn-cli", "uvicorn.run-in-a-script"])
def test_uvicorn_workers_feed_one_monitor_and_a_group_sigterm_flushes_once(
    run_dir: Path, app_file: Path, receiver: OtlpHttpReceiver, tmp_path: Path, started_by: str
) -> None:
    port = free_port()
    env = server_environment(run_dir, **otlp_settings(receiver.endpoint))
    if started_by == "uvicorn-cli":
        command = uvicorn_command(app_file, port, workers=WORKERS)
    else:
        command = uvicorn_script_command(app_file, port, workers=WORKERS)
    with running_server(command, env, port, tmp_path / "server.log") as server:
        monitor = check_one_monitor_for_all_workers(server)
        assert f"--key {server.pid}-" in server.processes()[monitor]  # named after the supervisor
        stop_group_and_check_exit(server, monitor, graceful_s=10.0)
    check_exported_once(receiver, N)


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
def test_gunicorn_uvicorn_workers_feed_one_monitor(
    run_dir: Path, app_file: Path, receiver: OtlpHttpReceiver, tmp_path: Path, preload: bool
) -> None:
    port = free_port()
    env = server_environment(run_dir, **otlp_settings(receiver.endpoint))
    command = gunicorn_command(app_file, port, workers=WORKERS, preload=preload)
    with running_server(command, env, port, tmp_path / "server.log") as server:
        monitor = check_one_monitor_for_all_workers(server)
        assert f"--key {server.pid}-" in server.processes()[monitor]  # named after the master
        stop_group_and_check_exit(server, monitor, graceful_s=10.0)
    check_exported_once(receiver, N)


def _post_through_a_recycle(client: httpx.Client) -> httpx.Response:
    """One prediction, sent again if its connection was reset unanswered: a worker that reached
    --max-requests closes the connections it accepted and had not read yet (the request never
    reached the app, so the count stays exact)."""
    for _ in range(5):
        try:
            response = client.post("/v1/models/demo:predict", content=b'{"instances": [[1, 2]]}')
        except (httpx.ReadError, httpx.RemoteProtocolError):
            time.sleep(0.1)
            continue
        assert response.status_code == 200
        return response
    pytest.fail("five connections in a row were reset")


def test_a_recycled_worker_finds_the_same_monitor_and_its_numbers(
    run_dir: Path, app_file: Path, tmp_path: Path
) -> None:
    """gunicorn with one worker recycled every 15 requests or so (`--max-requests`, a guard
    against leaks): each recycle leaves the monitor without a serving process for a moment. It
    waits for the replacement while the master runs, so the server keeps one monitor and its
    numbers (it left 0.25 s after each goodbye: a new monitor, every count back to 0); it still
    leaves with the server."""
    port = free_port()
    env = server_environment(run_dir, OTEL_METRICS_EXPORTER="none", OTEL_TRACES_EXPORTER="none")
    command = [*gunicorn_command(app_file, port, workers=1, preload=False), "--max-requests", "15"]
    with running_server(command, env, port, tmp_path / "server.log") as server:
        workers: set[int] = set()
        monitors: set[int] = set()
        sent = 0
        with fresh_client(server) as client:
            for _ in range(6):
                for _ in range(12):
                    response = _post_through_a_recycle(client)
                    workers.add(int(response.headers["x-worker-pid"]))
                    sent += 1
                time.sleep(1.0)  # the recycled worker's goodbye, and its replacement's start
        assert len(workers) >= 3, workers  # recycled twice at least
        document = settled_status(server, lambda d: d["requests"]["total"] == sent)
        monitors.add(int(document["process"]["pid"]))
        monitor = server.monitor_pid()
        monitors.add(monitor)
        assert monitors == {monitor}
        assert document["requests"]["total"] == sent  # every request, across the recycles
        stop_group_and_check_exit(server, monitor, graceful_s=10.0)


def _can_make_pid_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30, check=False
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not _can_make_pid_namespaces(), reason="needs unshare and the right to make PID namespaces"
)
def test_a_server_that_is_pid_1_of_its_container_exports_everything_before_it_exits(
    run_dir: Path, app_file: Path, receiver: OtlpHttpReceiver, tmp_path: Path
) -> None:
    """uvicorn as PID 1 of a PID namespace (a container's `CMD ["uvicorn", ...]`), stopped by
    SIGTERM to it alone: as it exits, the kernel kills every other process of the namespace, the
    monitor too. Its shutdown has the monitor export what it sent first (metrics every 60 s: only
    that export can carry these requests); it returned at once, and none was exported."""
    port = free_port()
    env = server_environment(run_dir, **otlp_settings(receiver.endpoint, export_interval_ms=60_000))
    command = ["unshare", "--pid", "--fork", "--mount-proc", *uvicorn_command(app_file, port)]
    with running_server(command, env, port, tmp_path / "server.log") as server:
        assert post_many(port, [("/v1/models/demo:predict", b'{"instances": [[1, 2]]}')] * N) == [200] * N
        (uvicorn,) = server.worker_pids()  # unshare's child: PID 1 inside
        os.kill(uvicorn, signal.SIGTERM)  # what the container runtime sends: to PID 1 only
        server.process.wait(MONITOR_EXIT_S + MARGIN_S)
        assert server.processes() == {}, server.describe()  # the namespace is gone, monitor and all
    exported = sum(point.count or 0 for point in receiver.latest_points("http.server.request.duration"))
    assert exported == N


# ---- kill -9 of the monitor ----------------------------------------------------------------------------


def test_kill_9_of_the_monitor_under_load_fails_no_request_and_counts_the_gap(
    run_dir: Path, app_file: Path, tmp_path: Path
) -> None:
    """Exact accounting across a monitor's death. Traffic pauses while the old monitor processes
    and acknowledges everything sent so far (its `/status` total is then final: `counted_by_old`),
    the old monitor is frozen (SIGSTOP: from then on it can neither count nor acknowledge), traffic
    resumes into it, and it is killed (-9) under that load. Every exchange answered afterwards is
    either counted by the new monitor or counted as dropped (`monitor_unavailable`: sent to the
    dead monitor unacknowledged, or dropped while none was reachable):

        answered == counted_by_old + new monitor's total + drops
    """
    port = free_port()
    env = server_environment(run_dir)
    with running_server(
        uvicorn_command(app_file, port, workers=WORKERS), env, port, tmp_path / "log"
    ) as server:
        # At most about 600 requests/s: the backlog a worker gathers while no monitor takes its
        # records stays far below the overload watermark, so no exchange is sampled (a sampled
        # one stands for several: the counts would be estimates, not exact).
        load = PipelinedLoad(server.port, connections=3, depth=2, reconnect=True, interval_s=0.01)
        load.start()
        try:
            assert wait_until(lambda: load.answered >= 300, 30), load.failures
            old = server.monitor_pid()
            load.pause()
            assert load.failures == []
            before = load.answered
            old_status = settled_status(server, lambda d: accounted(d) == before)
            assert old_status["process"]["pid"] == old
            assert accounted(old_status) == before, old_status
            # Nothing dropped so far: the old monitor counted every exchange (so the equation
            # below holds whether a restarted monitor's drop counters start from zero or not).
            counted_by_old = old_status["requests"]["total"]
            assert counted_by_old == before
            time.sleep(1.0)  # the monitor acknowledges what it processed every 0.2 s

            os.kill(old, signal.SIGSTOP)
            load.resume()
            assert wait_until(lambda: load.answered >= before + 200, 20), load.failures
            os.kill(old, signal.SIGKILL)
            killed_at = load.answered

            assert wait_until(lambda: server.monitor_pids() not in ([], [old]), 20), server.describe()
            assert wait_until(lambda: load.answered >= killed_at + 300, 20), load.failures
        finally:
            load.stop()
        assert load.failures == []
        answered = load.answered

        # Several serving processes may each start a monitor; the first to take the lock is the
        # one that serves, which is not necessarily the first started: read it from /status.
        final = settled_status(
            server, lambda d: d["process"]["pid"] != old and counted_by_old + accounted(d) == answered
        )
        new = final["process"]["pid"]
        assert new != old
        assert server.monitor_pid() == new, server.describe()
    assert final["monitoring"]["mode"] == "process"
    dropped = final["dropped"]
    print(
        f"answered {answered}: old monitor {counted_by_old}, new monitor {final['requests']['total']},"
        f" dropped {dropped}"
    )
    assert counted_by_old + accounted(final) == answered, (counted_by_old, final["requests"], dropped)
    assert dropped["monitor_unavailable"] > 0  # what the frozen monitor never acknowledged
    # The new monitor starts new cumulative series under a new instance id.
    assert final["process"]["instance_id"] != old_status["process"]["instance_id"]
    old_start = old_status["taken_unix_s"] - old_status["uptime_s"]
    assert final["taken_unix_s"] - final["uptime_s"] > old_start


# ---- a stalled or saturated monitor -------------------------------------------------------------------


def stable_status(server: RunningServer, timeout_s: float = 20.0) -> dict[str, Any]:
    """A `/status` whose request total did not change over more than two snapshot intervals
    (the monitor has processed all it was sent)."""
    deadline = time.monotonic() + timeout_s
    previous = status(server)
    while True:
        time.sleep(1.1)
        document = status(server)
        if document["requests"]["total"] == previous["requests"]["total"] or time.monotonic() > deadline:
            return document
        previous = document


def one_by_one(port: int, count: int) -> None:
    for _ in range(count):
        assert post_many(port, [("/v1/models/demo:predict", b'{"instances": [[1, 2]]}')]) == [200]
        time.sleep(0.02)


def test_a_stalled_monitor_leaves_no_lasting_sampling_behind(
    run_dir: Path, app_file: Path, tmp_path: Path
) -> None:
    """The monitor stops reading for 2 s (SIGSTOP: as a long pause of its host would) under load:
    the serving process's hand-off (2000 records here) fills, drops are counted, and once the
    backlog is shipped the serving process goes back to capturing every exchange, also when no
    traffic follows (its overload sampling follows the queue once per turn of its shipper, idle
    turns included)."""
    port = free_port()
    env = server_environment(run_dir, MODELTAP_QUEUE_MAX_RECORDS="2000")
    with running_server(uvicorn_command(app_file, port), env, port, tmp_path / "log") as server:
        load = PipelinedLoad(server.port, connections=2, depth=20)
        load.start()
        monitor = server.monitor_pid()
        try:
            # The monitor is up and processing (a stop during its start-up would let another
            # take its place).
            running = settled_status(server, lambda d: d["requests"]["total"] >= 1000)
            assert running["requests"]["total"] >= 1000, running["requests"]
            os.kill(monitor, signal.SIGSTOP)
            time.sleep(2.0)
        finally:
            load.stop()
            os.kill(monitor, signal.SIGCONT)
        assert load.failures == []

        def caught_up(document: dict[str, Any]) -> bool:
            # The stall's drops are counted (so these counts were sent after it), nothing is
            # queued any more, and every exchange is captured again.
            monitoring = document["monitoring"]
            stalled = document["dropped"]["queue_full"] + document["dropped"]["queue_bytes"] > 0
            return stalled and monitoring["queue_depth"] == 0 and int(monitoring["sampling_stride"]) == 1

        settled = settled_status(server, caught_up)
        assert caught_up(settled), (settled["dropped"], settled["monitoring"])
        assert settled["process"]["pid"] == monitor
        # Light traffic now: every request is captured and counted once.
        before = stable_status(server)["requests"]["total"]
        one_by_one(port, 20)
        after = settled_status(server, lambda d: d["requests"]["total"] >= before + 20, timeout_s=5.0)
    assert after["requests"]["total"] == before + 20


def test_a_monitor_paused_longer_than_the_send_timeout_counts_every_exchange_once(
    run_dir: Path, app_file: Path, tmp_path: Path
) -> None:
    """Light traffic (about 150 requests/s) while the monitor is paused for longer than the
    shipper's send timeout: the monitor is alive (it holds its lock), only slow, so the serving
    process waits for it rather than dropping the connection, which would count as lost the
    records the monitor still had to process, and then have them processed (counted twice)."""
    port = free_port()
    env = server_environment(run_dir)
    with running_server(uvicorn_command(app_file, port), env, port, tmp_path / "log") as server:
        load = PipelinedLoad(server.port, connections=1, depth=1, interval_s=0.005)
        load.start()
        monitor = server.monitor_pid()
        try:
            assert settled_status(server, lambda d: d["requests"]["total"] >= 100)["requests"]["total"] >= 100
            os.kill(monitor, signal.SIGSTOP)
            time.sleep(SEND_TIMEOUT_S + 1.5)
        finally:
            os.kill(monitor, signal.SIGCONT)
        time.sleep(0.5)
        load.stop()
        assert load.failures == []
        answered = load.answered
        document = settled_status(server, lambda d: accounted(d) == answered)
    assert document["process"]["pid"] == monitor
    assert document["requests"]["total"] == answered, document["dropped"]
    assert document["dropped"] == {"monitor_unavailable": 0, "queue_bytes": 0, "queue_full": 0}


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset to share one CPU")
def test_counts_reach_the_monitor_while_the_handoff_is_saturated(
    run_dir: Path, app_file: Path, tmp_path: Path
) -> None:
    """The server and its monitor share one CPU (the monitor at its lower priority) and 965 KB
    bodies keep coming: the monitor cannot keep up, the serving process's queue stays full. Its
    own counts (queue, drops, overload sampling) must still reach the monitor's `/status` while
    that lasts: the shipper ships in bounded turns, each also sending counts and reading control
    messages, rather than draining a queue that never empties."""
    port = free_port()
    env = server_environment(run_dir, MODELTAP_MONITOR_CPUS="0")
    command = ["taskset", "-c", "0", *uvicorn_command(app_file, port)]
    big = hostile_requests()[-1]
    with running_server(command, env, port, tmp_path / "log") as server:
        assert post_many(port, [big]) == [200]
        assert settled_status(server, lambda d: d["requests"]["total"] == 1)["requests"]["total"] == 1
        sending = threading.Event()
        sending.set()
        statuses: list[int] = []

        def send() -> None:
            while sending.is_set():
                statuses.extend(post_many(port, [big] * 4, depth=2))

        senders = [threading.Thread(target=send, daemon=True) for _ in range(2)]
        for sender in senders:
            sender.start()
        try:
            document = settled_status(
                server,
                lambda d: d["monitoring"]["queue_bytes"] > 0 and d["monitoring"]["sampling_stride"] > 1,
            )
        finally:
            sending.clear()
            for sender in senders:
                sender.join(30)
    assert set(statuses) == {200}
    monitoring = document["monitoring"]
    assert monitoring["queue_bytes"] > 0, monitoring
    assert monitoring["sampling_stride"] > 1, monitoring


# ---- lifetime, stale files, unsafe run directories ---------------------------------------------------


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on: bound, then closed (the file stays)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    assert path.is_socket()


def test_the_monitor_leaves_with_its_server_and_a_stale_socket_does_not_stop_the_next(
    run_dir: Path, app_file: Path, tmp_path: Path
) -> None:
    port = free_port()
    # A fixed monitor id: the second server gets the same key, hence the same socket paths.
    env = server_environment(run_dir, MODELTAP_MONITOR_ID="leaves")
    command = uvicorn_command(app_file, port)
    with running_server(command, env, port, tmp_path / "first.log") as server:
        assert post_many(port, [("/v1/models/demo:predict", b'{"instances": [[1, 2]]}')] * 10) == [200] * 10
        monitor = server.monitor_pid()
        assert settled_status(server, lambda d: d["requests"]["total"] == 10)["process"]["pid"] == monitor
        key = server.processes()[monitor].rsplit("--key ", 1)[1]
        sockets = [run_dir / f"{key}.sock", run_dir / f"{key}.views"]
        assert all(path.is_socket() for path in sockets)
        server.stop(signal.SIGTERM, group=False)  # a plain stop: the supervisor only
        stopped = time.monotonic()
        assert wait_until(lambda: not alive(monitor), MONITOR_EXIT_S + MARGIN_S), server.describe()
        print(f"the monitor exited {time.monotonic() - stopped:.2f} s after its server")
    assert [path for path in sockets if path.exists()] == []  # the lock file may stay

    for path in sockets:
        stale_socket(path)
    with running_server(command, env, port, tmp_path / "second.log") as server:
        assert post_many(port, [("/v1/models/demo:predict", b'{"instances": [[1, 2]]}')] * 5) == [200] * 5
        monitor = server.monitor_pid()
        document = settled_status(server, lambda d: d["requests"]["total"] == 5)
        assert document["requests"]["total"] == 5
        assert document["monitoring"]["mode"] == "process"
        assert document["process"]["pid"] == monitor
        assert f"--key {key}" in server.processes()[monitor]


FORKING_SERVER = r"""
import os, sys, time
from modeltap import ModelTapMiddleware

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})

middleware = ModelTapMiddleware(app, views_prefix=False)
middleware.start()
while not (middleware.tap.shipper and middleware.tap.shipper.connected):
    time.sleep(0.02)
if os.fork() == 0:  # a helper that does not exec: a multiprocessing child, a pre-forking library
    time.sleep(60)
    os._exit(0)
print("ready", flush=True)
time.sleep(3600)
"""


def test_a_helper_the_server_forked_does_not_keep_the_monitor_alive(run_dir: Path) -> None:
    """The fork inherits the serving process's connection to the monitor; the tap's at-fork hook
    closes it in the child. Else, the server killed, the monitor never saw its last connection
    end and lived as long as the helper."""
    env = server_environment(run_dir, OTEL_METRICS_EXPORTER="none", OTEL_TRACES_EXPORTER="none")
    server = subprocess.Popen(
        [sys.executable, "-c", FORKING_SERVER],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        monitors = [pid for pid in _session_pids(server.pid) if b"modeltap.monitor" in _cmdline(pid)]
        assert len(monitors) == 1, monitors
        helpers = [pid for pid in _session_pids(server.pid) if pid not in (server.pid, *monitors)]
        assert helpers, "the helper was not forked"
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        killed = time.monotonic()
        assert wait_until(lambda: not alive(monitors[0]), MONITOR_EXIT_S + MARGIN_S)
        assert all(alive(pid) for pid in helpers)  # the helper lives on; the monitor left anyway
        print(f"the monitor exited {time.monotonic() - killed:.2f} s after its server was killed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _session_pids(session: int) -> list[int]:
    """The live processes of a session (`start_new_session`: its id is the leader's pid)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                if os.getsid(int(entry.name)) == session and alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("unsafe", ["mode-0755", "other-owner"])
def test_an_unsafe_run_directory_means_inline_mode_logged(
    app_file: Path, tmp_path: Path, run_dir: Path, unsafe: str
) -> None:
    if unsafe == "mode-0755":
        run_dir.chmod(0o755)
    else:
        try:
            os.chown(run_dir, 65534, 65534)
        except PermissionError:
            pytest.skip("giving a directory to another user needs root")
    port = free_port()
    env = server_environment(run_dir)
    with running_server(uvicorn_command(app_file, port), env, port, tmp_path / "log") as server:
        assert post_many(port, [("/v1/models/demo:predict", b'{"instances": [[1, 2]]}')] * 5) == [200] * 5
        document = settled_status(server, lambda d: d["requests"]["total"] == 5)
        assert document["monitoring"]["mode"] == "inline"
        assert document["requests"]["total"] == 5
        assert document["process"]["pid"] == server.pid
        assert server.monitor_pids() == []
        assert list(run_dir.iterdir()) == []
        log = server.log_text()
    assert "no monitor process" in log, log
    assert str(run_dir) in log


# ---- the serving process's memory under hostile traffic ------------------------------------------------

HANDOFF_BYTES = 16 << 20
# On top of the hand-off buffer the serving process may hold what any server holds for the
# requests in flight (two pipelined 965 KB bodies: uvicorn's buffer, Starlette's joined body and
# the parsed JSON, about 6 MB each) and what the allocator keeps after freeing them.
MARGIN_BYTES = 32 << 20


def hostile_requests() -> list[tuple[str, bytes]]:
    """The trust issue's hostile inputs: 3000 model names the request claims (answered 404),
    200 rows of 1100 random keys, 40 bodies of 965 KB (just under the 1 MiB decode cap)."""
    rng = np.random.default_rng(7)
    names = [
        (f"/v1/models/m-{i:04d}:predict", json.dumps({"instances": [rng.normal(size=20).tolist()]}).encode())
        for i in range(3000)
    ]
    keys = [
        ("/score", json.dumps([{f"k{key:x}": 1.0 for key in rng.integers(0, 2**62, 1100)}]).encode())
        for _ in range(200)
    ]
    row = json.dumps(rng.normal(size=30).round(6).tolist())
    rows = (965 * 1024 - 20) // (len(row) + 2)
    big = ("/v1/models/big:predict", ('{"instances": [' + ",".join([row] * rows) + "]}").encode())
    return names + keys + [big] * 40


def test_hostile_traffic_does_not_grow_the_serving_process_past_its_handoff_buffer(
    run_dir: Path, app_file: Path, tmp_path: Path
) -> None:
    """The serving process's RSS (peak, sampled every 20 ms, and after the hand-off emptied) stays
    within the hand-off buffer plus a margin of its baseline.

    Measured on the 2-core test machine (several runs, same traffic, one uvicorn process, RSS
    growth over the warmed-up baseline, peak / after the traffic):

    | hand-off buffer   | process mode              | inline mode               |
    | 16 MiB            | +15..+21 / +5..+15 MiB    | +20..+22 / +19..+21 MiB   |
    | 64 MiB (default)  | +28..+55 / +4..+29 MiB    | +15..+41 / +14..+39 MiB   |

    Inline mode starts 10-15 MiB higher (the analysis state lives in the serving process) and
    stays at its peak afterwards; in process mode the peak is the hand-off buffer filling while
    the monitor, at its lower priority, reads more slowly than the burst arrives, and part of it
    is given back. The monitor process itself grew to 145-210 MiB. The burst took 1.1-1.3 s to serve in
    process mode, 1.5-1.8 s inline (an observation, not asserted).
    """
    port = free_port()
    env = server_environment(run_dir, MODELTAP_QUEUE_MAX_BYTES=str(HANDOFF_BYTES))
    hostile = hostile_requests()
    with running_server(uvicorn_command(app_file, port), env, port, tmp_path / "log") as server:
        # Warm up (imports, first-use caches, the monitor) on a few requests of each kind.
        warm = [*hostile[:5], *hostile[3000:3005], *hostile[-2:]]
        assert post_many(port, warm, depth=2) == [404] * 5 + [200] * 7
        assert (
            settled_status(server, lambda d: d["requests"]["total"] == len(warm))["requests"]["total"] == 12
        )
        baseline = rss_bytes(server.pid)
        peak = baseline
        sampling = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not sampling.is_set():
                peak = max(peak, rss_bytes(server.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            statuses = post_many(port, hostile[:3000], depth=16)
            statuses += post_many(port, hostile[3000:3200], depth=8)
            statuses += post_many(port, hostile[3200:], depth=2)
            # The hand-off is empty once the monitor has taken everything (exact counts are not
            # expected here: the overload sampling weighs what it admits while the queue fills).
            document = settled_status(
                server, lambda d: d["monitoring"]["queue_depth"] == 0 and d["monitoring"]["queue_bytes"] == 0
            )
        finally:
            sampling.set()
            sampler.join()
        after = rss_bytes(server.pid)
    assert statuses == [404] * 3000 + [200] * 240
    assert document["monitoring"]["mode"] == "process"
    assert document["monitoring"]["queue_bytes"] == 0, document["monitoring"]
    print(
        f"serving RSS baseline {baseline >> 20} MiB, peak +{(peak - baseline) >> 20} MiB,"
        f" after +{(after - baseline) >> 20} MiB; dropped {document['dropped']}"
    )
    assert peak - baseline <= HANDOFF_BYTES + MARGIN_BYTES
    assert after - baseline <= HANDOFF_BYTES + MARGIN_BYTES


# ---- what a serving process loads ------------------------------------------------------------------

# The analysis and what it brings: none of it belongs in a worker whose monitor analyses.
ANALYSIS_MODULES = (
    "modeltap.worker.analyzer",
    "modeltap.stats",
    "modeltap.export.otlp_metrics",
    "scipy",
    "opentelemetry.sdk",
    "opentelemetry.exporter",
    "grpc",
    "google.protobuf",
)


@pytest.mark.parametrize("mode", ["process", "inline"])
def test_a_worker_whose_monitor_analyses_loads_none_of_the_analysis(
    mode: str, run_dir: Path, app_file: Path, tmp_path: Path
) -> None:
    """With a reference profile and OTLP export configured, a served worker in process mode has
    loaded none of the analysis's modules after answering requests and its views (the monitor
    has them); inline, where the analysis runs in the worker, it has them all (so the check can
    tell). Printed: the worker's RSS, for the closing figures."""
    reference = tmp_path / "reference.json"
    rng = np.random.default_rng(7)
    write_profile(build_profile(rng.normal(size=(500, 3)), names=["a", "b", "c"]), reference)
    port = free_port()
    settings = otlp_settings("http://127.0.0.1:9")  # nothing listens: export fails, counted
    env = server_environment(run_dir, MODELTAP_MONITOR=mode, MODELTAP_REFERENCE=str(reference), **settings)
    body = json.dumps({"instances": [[0.1, 0.2, 0.3]]}).encode()
    with running_server(uvicorn_command(app_file, port), env, port, tmp_path / "log") as server:
        assert post_many(port, [("/v1/models/demo:predict", body)] * 20) == [200] * 20
        document = settled_status(server, lambda d: d["requests"]["total"] == 20)
        assert document["requests"]["total"] == 20
        assert document["monitoring"]["mode"] == mode
        with fresh_client(server) as client:
            assert client.get("/modeltap/metrics").status_code == 200
            response = client.get("/_modules?" + ",".join(ANALYSIS_MODULES))
        assert response.status_code == 200
        loaded = response.json()
        rss = rss_bytes(server.pid)
    print(f"{mode}: worker RSS {rss >> 20} MiB, analysis modules loaded: {loaded}")
    if mode == "process":
        assert loaded == []
    else:
        assert {"modeltap.worker.analyzer", "modeltap.stats", "scipy", "opentelemetry.sdk"} <= set(loaded)


# ---- control messages ------------------------------------------------------------------------------------


def test_the_monitors_payload_stride_reaches_every_worker_within_a_second(
    run_dir: Path, app_file: Path, tmp_path: Path
) -> None:
    """A tiny CPU budget for the monitor's analysis (0.1 % of a core) and more than 500 exchanges/s
    (below that the budget never acts): the monitor raises its payload stride and sends it to the
    taps. Every answer says which worker gave it and the stride that worker applied then."""
    port = free_port()
    env = server_environment(run_dir, MODELTAP_WORKER_CPU_BUDGET="0.001")
    with running_server(
        uvicorn_command(app_file, port, workers=WORKERS), env, port, tmp_path / "log"
    ) as server:
        workers = server.worker_pids()
        load = PipelinedLoad(server.port, connections=4, depth=25, reconnect=True)
        load.start()
        try:
            assert wait_until(lambda: any(stride > 1 for _, _, stride in load.seen), 30), load.failures
            first = min(at for at, _, stride in load.seen if stride > 1)
            # Load goes on past the second the design allows, then /status shows the stride.
            assert wait_until(lambda: load.seen[-1][0] > first + 3.0, 10)
            document = settled_status(
                server,
                lambda d: (
                    d["monitoring"]["control"].get("payload_stride", 1) > 1
                    and d["monitoring"]["payload_sampling_stride"] > 1
                ),
            )
        finally:
            load.stop()
    assert load.failures == []
    assert document["monitoring"]["control"].get("payload_stride", 1) > 1, document["monitoring"]
    assert document["monitoring"]["payload_sampling_stride"] > 1
    # Within a second by design (control every 0.2 s), half a second of margin on a busy machine.
    late = [(pid, stride) for at, pid, stride in load.seen if at > first + 1.5]
    assert {pid for pid, _ in late} == workers
    assert [entry for entry in late if entry[1] == 1] == []


# ---- a monitor that leaves before its serving processes ------------------------------------------


async def _model(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": b'{"predictions": [1]}'})


def test_a_monitor_that_leaves_first_has_every_exchange_counted_once(
    run_dir: Path, receiver: OtlpHttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM to the monitor alone: it waits DRAIN_S for its serving process, which goes on
    serving, then leaves with the process still connected. It processes and exports what it
    received and acknowledges it before it closes: the tap counts as lost only what it never
    processed (it counted the processed ones a second time, as `monitor_unavailable`)."""
    for name, value in {
        "MODELTAP_RUN_DIR": str(run_dir),
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRIC_EXPORT_INTERVAL": "60000",
        "OTEL_TRACES_EXPORTER": "none",
    }.items():
        monkeypatch.setenv(name, value)
    from modeltap import ModelTapMiddleware

    middleware = ModelTapMiddleware(_model, model_name="demo", views_prefix=False)
    body = b'{"instances": [[1, 2, 3]]}'
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/models/demo:predict", "raw_path": b"/v1/models/demo:predict",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000), "headers": [(b"content-type", b"application/json")],
    }  # fmt: skip
    answered = [0]

    async def call() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Any) -> None:
            pass

        await middleware(dict(scope), receive, send)
        answered[0] += 1

    async def load(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(6):
                await call()
            await asyncio.sleep(0.02)

    async def main() -> None:
        await load(1.0)
        shipper = middleware.tap.shipper
        assert shipper is not None
        first = shipper._spawned
        assert first is not None
        first.send_signal(signal.SIGTERM)
        left = time.monotonic() + 40.0
        while first.poll() is None and time.monotonic() < left:
            await load(0.5)
        assert first.poll() is not None, "the monitor did not leave"
        await load(1.0)  # into the next monitor
        await asyncio.sleep(0.5)
        middleware.tap.shutdown()

    asyncio.run(main())
    counted = dropped = 0
    for request in receiver.metric_requests():
        for point in flatten_metrics(request):
            if point.name == "http.server.request.duration":
                counted += point.count or 0
            elif (
                point.name == "modeltap.capture.dropped"
                and point.attributes.get("modeltap.drop.reason") in EXCHANGE_DROPS
            ):
                dropped += int(point.value or 0)
    assert counted + dropped == answered[0], (counted, dropped, answered[0])
