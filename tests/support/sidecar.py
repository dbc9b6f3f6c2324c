"""A real sidecar (proxy port + admin port, uvloop, the guarded httptools protocol) on 127.0.0.1
in a background thread, for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import uvloop

from modeltap.config import ModelTapConfig
from modeltap.records import ExchangeRecord, QueuedRecord
from modeltap.sidecar.runner import Sidecar
from modeltap.sidecar.settings import SidecarSettings


@dataclasses.dataclass
class RunningSidecar:
    sidecar: Sidecar
    loop: asyncio.AbstractEventLoop
    host: str
    port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def proxy_errors(self) -> dict[str, int]:
        """The sidecar's error counters right now (read on its loop, no snapshot delay)."""
        counts = self.sidecar.tap._proxy_errors
        return dict(counts) if counts else {}

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the sidecar's loop thread and return its result."""
        future = asyncio.run_coroutine_threadsafe(_call(fn, *args), self.loop)
        return future.result(10)


async def _call(fn: Any, *args: Any) -> Any:
    return fn(*args)


def _record_into(sidecar: Sidecar, records: list[ExchangeRecord]) -> None:
    """Every exchange the sidecar's capture hands to its queue, appended to `records`: installed
    before it serves (the capture takes the queue's `offer` as it starts, with the server)."""
    tap = sidecar.tap
    offer = tap.queue.offer

    def recording_offer(raw: QueuedRecord, kept_bytes: int) -> bool:
        assert not isinstance(raw, bytes), "records are kept raw under inline monitoring"
        records.append(ExchangeRecord._make(raw))
        return offer(raw, kept_bytes)

    tap.queue.offer = recording_offer  # type: ignore[method-assign]


def pool_state(sidecar: RunningSidecar) -> tuple[int, int]:
    """(connections in use, idle pooled connections), read on the sidecar's loop."""
    pool = sidecar.sidecar.pool
    result: tuple[int, int] = sidecar.call(lambda: (pool.active, pool.idle_count))
    return result


@contextlib.contextmanager
def running_sidecar(
    upstream: str,
    monitoring: ModelTapConfig | None = None,
    *,
    records: list[ExchangeRecord] | None = None,
    **settings: Any,
) -> Iterator[RunningSidecar]:
    """Start a sidecar in front of `upstream`; settings override SidecarSettings' defaults
    (ports default to ephemeral, drain delay to 0). Stops it (bounded) on exit. `records`: every
    exchange its capture hands to its queue is appended there (inline monitoring)."""
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "admin_host": "127.0.0.1",
        "admin_port": 0,
        "drain_delay_s": 0.0,
        "drain_timeout_s": 2.0,
        "probe_interval_s": 0.2,
    }
    options.update(settings)
    config = SidecarSettings(upstream=upstream, **options)
    sidecar = Sidecar(config, monitoring or ModelTapConfig(monitor="inline", views_prefix=None))
    sidecar.bind()
    if records is not None:
        _record_into(sidecar, records)
    loop = uvloop.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(sidecar.serve(on_ready=ready.set))
        except BaseException as exc:  # reported to the test
            failure.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="modeltap-sidecar-test", daemon=True)
    thread.start()
    assert ready.wait(10), "sidecar did not start within 10 s"
    assert not failure, f"sidecar failed to start: {failure[0]!r}"
    try:
        yield RunningSidecar(sidecar, loop, "127.0.0.1", sidecar.port, sidecar.admin_port)
    finally:
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(sidecar.stop)
        thread.join(15)
        assert not thread.is_alive(), f"sidecar did not stop within 15 s; where it was:\n{stuck(loop)}"
        assert not failure, f"sidecar failed: {failure[0]!r}"


def stuck(loop: asyncio.AbstractEventLoop) -> str:
    """Every thread's stack and the loop's pending tasks: what a stop that did not end waits on."""
    out = io.StringIO()
    try:
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            out.write(f"--- thread {names.get(ident, ident)}\n")
            traceback.print_stack(frame, file=out)
        # Read from outside the loop's thread (not thread-safe): best effort, never the failure.
        for task in asyncio.all_tasks(loop):
            out.write("--- ")
            task.print_stack(file=out)
    except Exception as exc:
        out.write(f"(the dump stopped: {exc!r})\n")
    return out.getvalue()
