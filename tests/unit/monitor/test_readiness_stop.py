"""The readiness probe's loop ends when stopped, even when a probe swallows the cancellation
(as `asyncio.wait_for` could before Python 3.12 when its connect completed at the cancel): a
loop that probed on held the sidecar's exit until the test's 15 s bound."""

from __future__ import annotations

import asyncio

from modeltap.monitor.admin import Readiness


def test_a_stop_whose_cancel_a_probe_swallows_still_ends_the_probe_loop() -> None:
    async def scenario() -> tuple[bool, int]:
        readiness = Readiness("127.0.0.1", 9, interval_s=0.01, failures_to_fail=1, timeout_s=0.1)
        probing = asyncio.Event()
        probes = 0
        swallowing = True

        async def swallowing_probe() -> bool:
            nonlocal probes
            probes += 1
            probing.set()
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if not swallowing:
                    raise
                # swallowed, as the old wait_for could
            return True

        readiness.probe_once = swallowing_probe  # type: ignore[method-assign]
        readiness.start()
        task = readiness._task
        assert task is not None
        await probing.wait()
        readiness.stop()  # lands inside the probe, which swallows it
        done, _ = await asyncio.wait({task}, timeout=1.0)
        swallowing = False
        while not task.done():  # a loop that went on: end it here, so the failure is quick
            task.cancel()
            await asyncio.sleep(0.02)
        return bool(done), probes

    ended, probes = asyncio.run(scenario())
    assert ended, "the probe loop went on after stop()"
    assert probes == 1


def test_a_stop_between_probes_ends_the_probe_loop_at_once() -> None:
    async def scenario() -> bool:
        readiness = Readiness("127.0.0.1", 9, interval_s=10.0, failures_to_fail=1, timeout_s=0.1)
        probed = asyncio.Event()

        async def quick_probe() -> bool:
            probed.set()
            return True

        readiness.probe_once = quick_probe  # type: ignore[method-assign]
        readiness.start()
        task = readiness._task
        assert task is not None
        await probed.wait()
        await asyncio.sleep(0)  # into the 10 s sleep between probes
        readiness.stop()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        return bool(done) and task.cancelled()

    assert asyncio.run(scenario())
