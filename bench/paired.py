#!/usr/bin/env python3
"""Two servers on one core at the same time: what one costs the serving core against the other,
with the machine's noise taken out.

`abbench.py` hits its variants in turn, a few seconds each, and on a shared virtual machine the
speed of the core changes between turns (per-round ratios span 0.7 to 1.2 there on a bad day).
Here both servers are pinned to core 0 and loaded at the same time, each by its own wrk on core 1
(16 connections each): the core's slow and fast moments fall on both, and the ratio of their
requests/s is the ratio of what a request costs each of them on that core. Two identical servers
give 0.96-0.99 in one order: the one whose wrk starts first gets a little more, so the order
alternates between rounds and both medians are printed with their geometric mean.

What this does not measure: the monitor's share of core 1 delays both wrks alike, so its cost to
the serving core through the load generator (bench/README.md) cancels out. Use it to compare
changes of the serving path (a difference of one point shows); report goals with `abbench.py`.

usage: paired.py A=COMMAND_WITH_{port} B=COMMAND_WITH_{port}   (each pins itself to core 0)
env:   ROUNDS (8), DUR seconds (5), WARMUP seconds (10), CONN, LUA, PATH_, HEALTH (as abbench.py)
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

from abbench import Sample, Variant, group_alive, parse_variants, run_wrk, wait_healthy

ROUNDS = int(os.environ.get("ROUNDS", "8"))
DUR = os.environ.get("DUR", "5")
WARMUP = os.environ.get("WARMUP", "10")


def together(first: Variant, second: Variant, duration: str) -> tuple[Sample, Sample]:
    """wrk on both at once, `first`'s started first."""
    results: dict[str, Sample] = {}

    def load(variant: Variant) -> None:
        results[variant.name] = run_wrk(variant.port, duration)

    thread = threading.Thread(target=load, args=(first,))
    thread.start()
    load(second)
    thread.join()
    return results[first.name], results[second.name]


def main() -> None:
    variants = parse_variants(sys.argv[1:])
    if len(variants) != 2:
        sys.exit(__doc__)
    a, b = variants
    processes = []
    try:
        for variant in variants:
            assert variant.command is not None, "paired.py starts both servers itself"
            processes.append(
                subprocess.Popen(
                    variant.command,
                    shell=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    # Its own process group (to stop it whole), in this session: with separate
                    # sessions, Linux's autogroups share the cores between sessions, not between
                    # the servers, and the monitor's session would count as a third contender.
                    process_group=0,
                )
            )
        for variant in variants:
            wait_healthy(variant)
        together(a, b, WARMUP)
        orders: dict[str, list[float]] = {f"{a.name} first": [], f"{b.name} first": []}
        for round_ in range(ROUNDS):
            if round_ % 2 == 0:
                sample_a, sample_b = together(a, b, DUR)
                orders[f"{a.name} first"].append(sample_b.rps / sample_a.rps)
            else:
                sample_b, sample_a = together(b, a, DUR)
                orders[f"{b.name} first"].append(sample_b.rps / sample_a.rps)
            print(f"round {round_ + 1}: {a.name} {sample_a.rps:8.0f}  {b.name} {sample_b.rps:8.0f}  "
                  f"ratio {sample_b.rps / sample_a.rps:.3f}", flush=True)  # fmt: skip
        medians = [statistics.median(ratios) for ratios in orders.values() if ratios]
        for order, ratios in orders.items():
            if ratios:
                print(f"{b.name}/{a.name}, {order}: median {statistics.median(ratios):.3f} "
                      f"[{min(ratios):.3f}-{max(ratios):.3f}]")  # fmt: skip
        mean = math.prod(medians) ** (1 / len(medians))
        print(f"{b.name}/{a.name}: {mean:.3f} (geometric mean of the orders)")
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            while group_alive(process.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if group_alive(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
