#!/usr/bin/env python3
"""What the sidecar's data plane pays per proxied request, without sockets: the assembled sidecar
(`Sidecar`: its client protocol, `ModelTapMiddleware`, `ProxyApp`, the upstream pool) driven on its
own event loop (uvloop) through fake transports, one keep-alive client connection and one pooled
upstream connection that answers every request with the reference app's response. CPU time of
the serving thread (`time.thread_time`), best of 5 passes of N requests, in batches of 200 with a
pause after each so that the monitor keeps up. The counterpart of `inprocess.py` for the sidecar:
it moves far less between runs than requests/s under wrk, so a change of a fraction of a
microsecond shows (caches are warm here: under wrk the same code costs two to three times more).

Each variant runs in its own process, pinned to core 0 (the monitor on core 1), in interleaved
rounds. `PROFILE=1` prints, instead, the Python functions the data plane calls per request and their
own time (cProfile, one variant; e.g. `PROFILE=1 inprocess_sidecar.py off=MODELTAP_ENABLED=false`).

usage: inprocess_sidecar.py [NAME=ENV_ASSIGNMENTS ...]
       default variants: off=MODELTAP_ENABLED=false  sidecar=  traced=OTEL_TRACES_SAMPLER=always_on
       e.g. compare another checkout: "before= PYTHONPATH=/path/to/old/src"
env:   ROUNDS (3), N (20000)
"""

from __future__ import annotations

import asyncio
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT = ["off=MODELTAP_ENABLED=false", "sidecar=", "traced=OTEL_TRACES_SAMPLER=always_on"]
BODY = b'{"instances": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]]}'
REQUEST = (
    b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
ANSWER = b'{"predictions": [0.5]}'
# What the reference app (`apps.py` under uvicorn) answers.
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 14:00:00 GMT\r\nserver: uvicorn\r\n"
    b"content-length: %d\r\ncontent-type: application/json\r\n\r\n%s" % (len(ANSWER), ANSWER)
)


class _ClientTransport(asyncio.Transport):
    """The client's side: collects what the sidecar writes, and tells when a response is whole."""

    def __init__(self) -> None:
        super().__init__()
        self.received = 0
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.received += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class _UpstreamTransport(_ClientTransport):
    """The upstream's side: every request written is answered on the loop's next turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: Any) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._loop.call_soon(self._protocol.data_received, RESPONSE)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket: the pool's reuse check has nothing to ask


def child() -> None:
    """Drive the sidecar's data plane; print the best µs of thread CPU per request."""
    import uvicorn
    import uvloop
    from uvicorn.server import ServerState

    from modeltap.sidecar.runner import Sidecar
    from modeltap.sidecar.settings import resolve
    from modeltap.sidecar.upstream import UpstreamConnection

    settings, monitoring = resolve(
        {"upstream": "http://127.0.0.1:9", "port": 0, "admin_port": 0},
        {"model_name": "bench", "reference": os.environ.get("REFERENCE") or None},
    )
    sidecar = Sidecar(settings, monitoring)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    config = uvicorn.Config(
        sidecar.middleware, http=sidecar._protocol, lifespan="off", log_config=None, access_log=False,
        server_header=False, date_header=False, proxy_headers=False,
    )  # fmt: skip
    config.load()
    state = ServerState()
    protocol = sidecar._protocol(config=config, server_state=state, app_state={}, _loop=loop)
    client = _ClientTransport()
    protocol.connection_made(client)
    upstream = UpstreamConnection(loop, settings.max_header_bytes)
    upstream.connection_made(_UpstreamTransport(loop, upstream))
    pool = sidecar.pool

    def park_upstream() -> None:
        if not pool.idle_count:  # the one connection, back in the pool for the next request
            upstream.in_exchange = False
            upstream.held = False
            upstream.idle_since = time.monotonic()
            pool._idle.append(upstream)

    answered: list[asyncio.Future[None]] = []
    on_response_complete = protocol.on_response_complete

    def response_complete() -> None:  # what uvicorn calls once a response is written
        on_response_complete()
        answered.pop().set_result(None)

    protocol.on_response_complete = response_complete

    async def one() -> None:
        park_upstream()
        waiter = loop.create_future()
        answered.append(waiter)
        protocol.data_received(REQUEST)
        await waiter
        if client.closing:
            raise SystemExit("the sidecar closed the client connection: see its log")

    async def drive() -> float:
        for _ in range(3000):  # warm-up, and the first request starts the monitor
            await one()
        await asyncio.sleep(1.0)
        n = int(os.environ.get("N", "20000"))
        profile = os.environ.get("PROFILE") == "1"
        if profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(n):
                await one()
                if i % 200 == 199:
                    await asyncio.sleep(0.01)
            profiler.disable()
            rows = sorted(
                ((own / n * 1e6, calls / n, f"{Path(f).name}:{line}:{name}")
                 for (f, line, name), (_, calls, own, *_) in pstats.Stats(profiler).stats.items()),  # type: ignore[attr-defined]
                reverse=True,
            )  # fmt: skip
            print("   µs own  calls  (per request; cProfile's own overhead included)")
            for own_us, per_request, where in rows:
                if per_request >= 0.05:
                    print(f"{own_us:8.2f} {per_request:6.2f}  {where}")
            return 0.0
        best = float("inf")
        for _ in range(5):
            spent = 0.0
            for _ in range(max(1, n // 200)):
                started = time.thread_time()
                for _ in range(200):
                    await one()
                spent += time.thread_time() - started
                await asyncio.sleep(0.01)
            best = min(best, spent / (max(1, n // 200) * 200) * 1e6)
        return best

    best = loop.run_until_complete(drive())
    if os.environ.get("PROFILE") != "1":
        print(f"{best:.3f}")
    sidecar.tap.shutdown()


def main() -> None:
    variants = [arg.split("=", 1) for arg in (sys.argv[1:] or DEFAULT)]
    rounds = int(os.environ.get("ROUNDS", "3"))
    pin = ["taskset", "-c", "0"] if sys.platform.startswith("linux") else []
    scratch = tempfile.TemporaryDirectory(prefix="mt-inprocess-")
    reference = str(Path(scratch.name) / "reference.json")
    subprocess.run([sys.executable, str(HERE / "make_reference.py"), reference, "10"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    results: dict[str, list[float]] = {name: [] for name, _ in variants}
    with scratch:
        for _ in range(1 if os.environ.get("PROFILE") == "1" else rounds):
            for name, assignments in variants:
                env = dict(os.environ, MODELTAP_MONITOR_CPUS="1", REFERENCE=reference, INPROCESS_CHILD="1")
                env.setdefault("MODELTAP_WORKER_CPU_BUDGET", "1.0")
                env.setdefault("MODELTAP_RUN_DIR", str(Path(scratch.name) / "run"))
                env.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nothing listens
                env.setdefault("OTEL_METRIC_EXPORT_INTERVAL", "3600000")
                for assignment in shlex.split(assignments):
                    key, _, value = assignment.partition("=")
                    env[key] = value
                command = [*pin, sys.executable, __file__]
                out = subprocess.run(command, env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"{name} failed:\n{out.stderr[-2000:]}")
                if os.environ.get("PROFILE") == "1":
                    print(f"== {name} (Python calls per request)\n{out.stdout}")
                    continue
                results[name].append(float(out.stdout.split()[-1]))
    if os.environ.get("PROFILE") == "1":
        return
    first = statistics.median(results[variants[0][0]])
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:16s} {median:7.2f} µs/request   {median - first:+6.2f} vs {variants[0][0]}   "
              f"(rounds: {' '.join(f'{v:.2f}' for v in values)})")  # fmt: skip


if __name__ == "__main__":
    child() if os.environ.get("INPROCESS_CHILD") == "1" else main()
