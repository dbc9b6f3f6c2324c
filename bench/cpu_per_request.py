#!/usr/bin/env python3
"""CPU time per request of a running server process (all its threads, and its children), under
wrk load: a figure that shared-machine noise moves far less than requests/s.

usage: cpu_per_request.py NAME=PORT:PID [...]     env: DUR (4 s), LUA (post.lua), PATH_ (/predict)
Prints, per process, the requests served and the µs of CPU per request.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

DUR = os.environ.get("DUR", "4")
LUA = os.environ.get("LUA", "post.lua")
PATH_ = os.environ.get("PATH_", "/predict")
TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread (by name; same names summed), children included."""
    found: dict[str, float] = {}
    pids = [pid]
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    pids += [int(child) for child in children]
    for process in pids:
        try:
            tasks = os.listdir(f"/proc/{process}/task")
        except FileNotFoundError:
            continue  # a child that exited since pgrep saw it
        for task in tasks:
            try:
                with open(f"/proc/{process}/task/{task}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{process}/task/{task}/comm") as handle:
                    name = handle.read().strip()
            except OSError:
                continue
            found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return found


def measure(name: str, port: int, pid: int) -> None:
    before = thread_cpu(pid)
    run = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            "-c16",
            f"-d{DUR}s",
            "-s",
            LUA,
            f"http://127.0.0.1:{port}{PATH_}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    out = run.stdout + run.stderr
    after = thread_cpu(pid)
    match = re.search(r"(\d+) requests in", out)
    if run.returncode or match is None:
        sys.exit(f"wrk failed against {name}:\n{out}")
    requests = int(match.group(1))
    total = sum(after.values()) - sum(before.values())
    threads = {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0) > 0}
    detail = "  ".join(
        f"{k} {v / requests * 1e6:.1f}" for k, v in sorted(threads.items(), key=lambda kv: -kv[1])
    )
    print(f"{name:<16} {requests:>7} requests  {total / requests * 1e6:6.1f} µs CPU/request   ({detail})")


def main() -> None:
    for arg in sys.argv[1:]:
        name, target = arg.split("=", 1)
        port, pid = target.split(":")
        measure(name, int(port), int(pid))


if __name__ == "__main__":
    main()
