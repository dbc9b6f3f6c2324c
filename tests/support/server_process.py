"""Model servers as real processes (uvicorn, gunicorn) for the monitor-process tests.

`write_app` writes a small Starlette model server wrapped by `ModelTapMiddleware` (its settings
come from the environment, so process or inline mode is the test's choice). Around the
middleware, outside of what modeltap sees, a thin ASGI layer adds `x-worker-pid` and
`x-payload-stride` to every answer (which worker answered, and the payload stride its tap applies
at that moment) and answers `/_ready` itself, so a readiness probe starts no tap and is counted
nowhere, and `/_modules` (which of the modules named in its query the worker has loaded).

`running_server` starts the server in a session of its own (`start_new_session=True`: the server,
its workers and the monitor they start can be signalled as one process group) and stops whatever
is left of it at the end. `session_processes` lists the live processes of that session from
/proc. `PipelinedLoad` sends requests from a thread, several pipelined on each connection, and
checks every answer.

Typical use::

    app = write_app(tmp_path)
    with running_server(uvicorn_command(app, port, workers=3), env, port, tmp_path / "log") as server:
        load = PipelinedLoad(server.port, connections=3)
        load.run(requests=90)
        server.monitor_pid()
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.polling import wait_until

APP_SOURCE = '''
"""A model server for the monitor-process tests (written by tests/support/server_process.py)."""

import json
import os
import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from modeltap import ModelTapMiddleware

KNOWN = {"demo", "big"}


async def predict(request: Request) -> JSONResponse:
    document = await request.json()
    if request.path_params["name"] not in KNOWN:
        return JSONResponse({"error": "model not found"}, status_code=404)
    return JSONResponse({"predictions": [sum(row) for row in document["instances"]]})


async def score(request: Request) -> JSONResponse:
    rows = await request.json()
    return JSONResponse({"predictions": [0.5 for _ in rows]})


model = Starlette(
    routes=[
        Route("/v1/models/{name}:predict", predict, methods=["POST"]),
        Route("/score", score, methods=["POST"]),
    ]
)
tapped = ModelTapMiddleware(model)


async def app(scope, receive, send):
    if scope["type"] != "http":
        await tapped(scope, receive, send)
        return
    if scope["path"] in ("/_ready", "/_modules"):
        if scope["path"] == "/_ready":
            body = json.dumps({"pid": os.getpid()}).encode()
        else:
            names = scope["query_string"].decode().split(",")
            body = json.dumps(sorted(name for name in names if name in sys.modules)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return

    async def send_with_worker(message):
        if message["type"] == "http.response.start":
            stride = str(tapped.tap.sampling.payload_stride).encode()
            extra = [(b"x-worker-pid", str(os.getpid()).encode()), (b"x-payload-stride", stride)]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    await tapped(scope, receive, send_with_worker)
'''


def write_app(directory: Path) -> Path:
    """Write the model server as `mt_app.py` in `directory`; returns the file."""
    path = directory / "mt_app.py"
    path.write_text(APP_SOURCE)
    return path


def free_port() -> int:
    """A loopback port nobody listens on now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uvicorn_command(app: Path, port: int, workers: int = 1) -> list[str]:
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(app.parent), "mt_app:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "info", "--no-access-log"]
    return [*command, "--workers", str(workers)] if workers > 1 else command


def uvicorn_script_command(app: Path, port: int, workers: int) -> list[str]:
    """`uvicorn.run(..., workers=N)` called by a script of the application's own (as `fastapi run
    --workers N` does): uvicorn's supervisor under a command line that does not name it."""
    script = app.parent / "serve_mt_app.py"
    script.write_text(
        "import uvicorn\n\n"
        "if __name__ == '__main__':\n"
        f"    uvicorn.run('mt_app:app', host='127.0.0.1', port={port}, workers={workers},"
        f" app_dir={str(app.parent)!r}, access_log=False)\n"
    )
    return [sys.executable, str(script)]


def gunicorn_command(app: Path, port: int, workers: int, preload: bool) -> list[str]:
    command = [sys.executable, "-m", "gunicorn", "--pythonpath", str(app.parent), "mt_app:app"]
    command += ["-k", "uvicorn.workers.UvicornWorker", "-w", str(workers), "-b", f"127.0.0.1:{port}"]
    command += ["--graceful-timeout", "10", "--log-level", "info"]
    return [*command, "--preload"] if preload else command


def server_environment(run_dir: Path, **settings: str) -> dict[str, str]:
    """This process's environment without its OTEL_* and MODELTAP_* variables, with a private run
    directory, the model name and `settings` (variable names as given)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MODELTAP_"))}
    env.update(
        {
            "MODELTAP_RUN_DIR": str(run_dir),
            "MODELTAP_MODEL_NAME": "demo",
            "PYTHONUNBUFFERED": "1",
            # gunicorn's UvicornWorker lives in a deprecated module: its warning is expected.
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
        }
    )
    env.update(settings)
    return env


def otlp_settings(endpoint: str, export_interval_ms: int = 60_000) -> dict[str, str]:
    """OTLP/HTTP to `endpoint`, every exchange traced, spans sent every 200 ms."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRIC_EXPORT_INTERVAL": str(export_interval_ms),
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_TRACES_SAMPLER": "always_on",
    }


# ---- processes ----------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Running, or at least not yet exited (an exited child not reaped yet is a zombie: gone)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def session_processes(session: int) -> dict[int, str]:
    """Live processes of session `session` (pid: command line)."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        # fields: state, ppid, pgrp, session, ...
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[3]) == session:
            found[int(entry)] = command_line(int(entry))
    return found


def flock_holders() -> set[int]:
    """Pids holding a flock(2) lock anywhere (/proc/locks: `1: FLOCK ADVISORY WRITE PID ...`)."""
    holders = set()
    with open("/proc/locks") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) > 4 and fields[1] == "FLOCK" and fields[4].isdigit():
                holders.add(int(fields[4]))
    return holders


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def processes(self) -> dict[int, str]:
        return session_processes(self.process.pid)

    def monitor_pids(self) -> list[int]:
        return [pid for pid, command in self.processes().items() if "modeltap.monitor" in command]

    def monitor_pid(self, timeout_s: float = 10.0) -> int:
        """The one monitor of this server: the monitor process holding the server's lock (waits
        for it to be started). Counting monitor processes alone is not enough: when two workers
        start one at the same moment, the one that loses the lock lives for a few milliseconds,
        and the winner may not have exec'd yet (its command line still the worker's)."""

        def holders() -> list[int]:
            locked = flock_holders()
            return [pid for pid in self.monitor_pids() if pid in locked]

        assert wait_until(lambda: len(holders()) == 1, timeout_s), self.describe()
        return holders()[0]

    def worker_pids(self) -> set[int]:
        """Children of the supervisor that serve requests (not multiprocessing's resource tracker)."""
        workers = set()
        for pid, command in self.processes().items():
            fields = _stat(pid)
            if fields is not None and int(fields[1]) == self.pid and "resource_tracker" not in command:
                workers.add(pid)
        return workers

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def describe(self) -> str:
        return f"processes: {self.processes()}\nlog:\n{self.log_text()[-4000:]}"

    def stop(self, signum: int = signal.SIGTERM, group: bool = True, timeout_s: float = 20.0) -> float:
        """Signal the server (its whole process group, or only the supervisor) and wait for the
        supervisor to exit; returns the seconds that took."""
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, signum)
            else:
                self.process.send_signal(signum)
        self.process.wait(timeout_s)
        return time.monotonic() - started


def _ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"GET /_ready HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@contextlib.contextmanager
def running_server(
    command: list[str], env: Mapping[str, str], port: int, log: Path, ready_timeout_s: float = 30.0
) -> Iterator[RunningServer]:
    """Start `command` in a new session, wait until it answers on `port`; on exit, SIGKILL
    whatever of its session is still alive."""
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, env=dict(env), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = RunningServer(process, port, log)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not _ready(port):
            assert process.poll() is None, f"the server exited during startup\n{server.log_text()}"
            assert time.monotonic() < deadline, f"the server did not start\n{server.log_text()}"
            time.sleep(0.05)
        yield server
    finally:
        for pid in server.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5.0)


# ---- load -----------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def _read_answers(sock: socket.socket, count: int, buffer: bytearray) -> list[Answer]:
    """`count` answers framed by Content-Length (what uvicorn sends for these routes)."""
    answers: list[Answer] = []
    while len(answers) < count:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            lines = bytes(buffer[:end]).split(b"\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            if len(buffer) >= end + 4 + length:
                body = bytes(buffer[end + 4 : end + 4 + length])
                del buffer[: end + 4 + length]
                answers.append(Answer(int(lines[0].split(b" ")[1]), headers, body))
                continue
        data = sock.recv(262144)
        if not data:
            raise ConnectionError(f"closed after {len(answers)} of {count} answers")
        buffer += data
    return answers


def predict_request(value: int) -> tuple[bytes, Any]:
    """A KServe V1 request for `demo` and the answer the model gives."""
    body = json.dumps({"instances": [[value, 1.5, 2]]}).encode()
    head = (
        f"POST /v1/models/demo:predict HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body, {"predictions": [value + 3.5]}


@dataclass
class PipelinedLoad:
    """Predict requests on `connections` keep-alive connections, `depth` pipelined at a time, from
    threads; every answer must be a 200 with the model's answer (else it is listed in `failures`).
    With `reconnect`, each pipelined batch goes on a new connection, so the kernel hands the
    batches to the workers of a multi-process server at random (a kept connection stays with one);
    `interval_s` caps the rate.

    `run(requests=N)` sends exactly N and waits; `start()`/`pause()`/`resume()`/`stop()` drive a
    continuous load. `answered` counts the 200s with the right body; `seen` lists (monotonic time,
    worker pid, payload stride) for every answer."""

    port: int
    connections: int = 3
    depth: int = 1
    reconnect: bool = False
    interval_s: float = 0.0  # pause between a connection's batches (caps the rate)
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    seen: list[tuple[float, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._threads: list[threading.Thread] = []
        self._budget: int | None = None
        self._idle = threading.Semaphore(0)

    def _take(self, wanted: int) -> int:
        with self._lock:
            if self._budget is None:
                return wanted
            taken = min(wanted, self._budget)
            self._budget -= taken
            return taken

    def _connection(self, index: int) -> None:
        sock: socket.socket | None = None
        buffer = bytearray()
        value = index * 1_000_000
        try:
            while not self._stop.is_set():
                if not self._running.is_set():
                    self._idle.release()
                    self._running.wait()
                    continue
                count = self._take(self.depth)
                if count == 0:
                    return
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=30.0)
                    buffer.clear()
                requests, expected = [], []
                for _ in range(count):
                    value += 1
                    request, answer = predict_request(value)
                    requests.append(request)
                    expected.append(answer)
                sock.sendall(b"".join(requests))
                answers = _read_answers(sock, count, buffer)
                if self.reconnect:
                    sock.close()
                    sock = None
                now = time.monotonic()
                with self._lock:
                    for answer, wanted in zip(answers, expected, strict=True):
                        pid = int(answer.headers.get(b"x-worker-pid", b"0"))
                        stride = int(answer.headers.get(b"x-payload-stride", b"0"))
                        self.seen.append((now, pid, stride))
                        if answer.status == 200 and json.loads(answer.body) == wanted:
                            self.answered += 1
                        else:
                            self.failures.append(f"{answer.status} {answer.body[:200]!r}")
                if self.interval_s:
                    time.sleep(self.interval_s)
        except Exception as exc:
            with self._lock:
                self.failures.append(f"connection {index}: {exc!r}")
        finally:
            if sock is not None:
                sock.close()

    def start(self, requests: int | None = None) -> None:
        self._budget = requests
        self._threads = [
            threading.Thread(target=self._connection, args=(i,), daemon=True) for i in range(self.connections)
        ]
        for thread in self._threads:
            thread.start()

    def pause(self, timeout_s: float = 10.0) -> None:
        """Stop sending; returns once every connection has its answers."""
        self._running.clear()
        deadline = time.monotonic() + timeout_s
        for _ in [t for t in self._threads if t.is_alive()]:
            paused = self._idle.acquire(timeout=max(0.0, deadline - time.monotonic()))
            assert paused, "a connection did not pause"

    def resume(self) -> None:
        self._running.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._running.set()
        for thread in self._threads:
            thread.join(timeout_s)
            assert not thread.is_alive(), "a load connection did not finish"

    def run(self, requests: int, timeout_s: float = 60.0) -> None:
        """Send exactly `requests` requests and wait for their answers."""
        self.start(requests)
        for thread in self._threads:
            thread.join(timeout_s)
            assert not thread.is_alive(), "the load did not finish"

    def workers(self) -> set[int]:
        with self._lock:
            return {pid for _, pid, _ in self.seen}


def post_many(port: int, requests: list[tuple[str, bytes]], depth: int = 8) -> list[int]:
    """POST each (path, JSON body) on one keep-alive connection, `depth` pipelined at a time;
    returns the answers' status codes in order."""
    statuses: list[int] = []
    buffer = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=30.0) as sock:
        for start in range(0, len(requests), depth):
            batch = requests[start : start + depth]
            for path, body in batch:
                head = (
                    f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\n\r\n"
                ).encode()
                sock.sendall(head + body)
            statuses += [answer.status for answer in _read_answers(sock, len(batch), buffer)]
    return statuses
