"""The readiness probe's loop ends when stopped, even when a probe swallows the cancellation
(as `asyncio.wait_for` could before Python 3.12 when its connect completed at the cancel): a
loop that probed on held the sidecar's exit until the test's 15 s bound."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from modeltap.monitor.admin import Readiness


async def stopped_while(
    probe: Callable[[], Coroutine[Any, Any, bool]], probing: asyncio.Event, interval_s: float
) -> asyncio.Task[None]:
    """Start the loop with `probe`, call `stop()` once `probing` is set, and return its task when
    it ended, or after 1 s (then still running: the caller ends it)."""
    readiness = Readiness("127.0.0.1", 9, interval_s=interval_s, failures_to_fail=1, timeout_s=0.1)
    readiness.probe_once = probe  # type: ignore[method-assign]
    readiness.start()
    task = readiness._task
    assert task is not None
    await probing.wait()
    await asyncio.sleep(0)
    readiness.stop()
    await asyncio.wait({task}, timeout=1.0)
    return task


def test_a_stop_whose_cancel_a_probe_swallows_still_ends_the_probe_loop() -> None:
    async def scenario() -> tuple[bool, int]:
        probing = asyncio.Event()
        probes = 0
        swallowing = True

        async def swallowing_probe() -> bool:
            nonlocal probes
            probes += 1
            probing.set()
            try:
                await asyncio.sleep(0.05)  # stop() lands here
            except asyncio.CancelledError:
                if not swallowing:
                    raise
                # swallowed, as the old wait_for could
            return True

        task = await stopped_while(swallowing_probe, probing, interval_s=0.01)
        ended = task.done()
        swallowing = False
        while not task.done():  # a loop that went on: end it here, so the failure is quick
            task.cancel()
            await asyncio.sleep(0.02)
        return ended, probes

    ended, probes = asyncio.run(scenario())
    assert ended, "the probe loop went on after stop()"
    assert probes == 1


def test_a_stop_between_probes_ends_the_probe_loop_at_once() -> None:
    async def scenario() -> bool:
        probed = asyncio.Event()

        async def quick_probe() -> bool:
            probed.set()
            return True

        task = await stopped_while(quick_probe, probed, interval_s=10.0)  # stop() in the sleep
        return task.done() and task.cancelled()

    assert asyncio.run(scenario())
