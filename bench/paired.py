#!/usr/bin/env python3
"""Two servers on one core at the same time: what one costs the serving core against the other,
with the machine's noise taken out.

`abbench.py` hits its variants in turn, a few seconds each, and on a shared virtual machine the
speed of the core changes between turns (per-round ratios span 0.7 to 1.2 there on a bad day).
Here both servers are pinned to core 0 and loaded at the same time, each by its own wrk on core 1
(16 connections each): the core's slow and fast moments fall on both, and the ratio of their
requests/s is the ratio of what a request costs each of them on that core. Two identical servers
gave 0.97 in one order and 1.01 in the other: the one whose wrk starts first gets a little more,
so the order alternates between rounds and both medians are printed with their geometric mean.

What this does not measure: the monitor's share of core 1 delays both wrks alike, so its cost to
the serving core through the load generator (bench/README.md) cancels out. Use it to compare
changes of the serving path: its rounds stay within a few points where abbench.py's span tens,
though two builds of the same request path have differed by up to two points (bench/README.md);
report goals with `abbench.py`.

usage: paired.py A=COMMAND_WITH_{port} B=COMMAND_WITH_{port}   (each pins itself to core 0)
env:   ROUNDS (8), DUR seconds (5), WARMUP seconds (10), CONN, LUA, PATH_, HEALTH (as abbench.py)
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import threading

from abbench import Sample, Variant, parse_variants, run_wrk, start_servers, stop_servers

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
    if a.command is None or b.command is None:
        sys.exit("paired.py starts both servers itself: give each a command")
    # Both in this session: in sessions of their own, Linux's autogroups would share core 0
    # between the sessions, and the monitor's session would count as a third contender.
    processes = start_servers(variants, own_sessions=False)
    try:
        together(a, b, WARMUP)
        a_first, b_first = f"{a.name} first", f"{b.name} first"
        orders: dict[str, list[float]] = {a_first: [], b_first: []}
        for round_ in range(ROUNDS):
            if round_ % 2 == 0:
                sample_a, sample_b = together(a, b, DUR)
            else:
                sample_b, sample_a = together(b, a, DUR)
            orders[a_first if round_ % 2 == 0 else b_first].append(sample_b.rps / sample_a.rps)
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
        stop_servers(processes)


if __name__ == "__main__":
    main()
