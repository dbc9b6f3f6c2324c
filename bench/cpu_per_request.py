#!/usr/bin/env python3
"""CPU time per request of a running server process (all its threads, and the processes below
it), under wrk load: a figure that shared-machine noise moves far less than requests/s.

usage: cpu_per_request.py NAME=PORT:PID [...]     env: DUR (4 s), LUA (post.lua), PATH_ (/predict)
Prints, per server, the requests served and the µs of CPU per request, in all and per process
(`server`: PID itself; `serving`: processes below it that serve, a sidecar's data plane or a
server's workers; `monitor`: modeltap's monitor process), each with its threads' shares, largest
first (on Python 3.11 threads carry no names: the serving process's event loop comes first, its
shipper after; the monitor's analysis thread first, its event loop, then its export thread).
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


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (a sidecar's data plane and monitor, a server's monitor)."""
    found = [pid]
    for parent in found:
        children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
        found += [int(child) for child in children.split()]
    return found


def role(pid: int, top: int) -> str:
    """What a process is, from its command line: the monitor, or else the server (or its workers)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read()
    except OSError:
        return "gone"
    if b"modeltap.monitor" in command:
        return "monitor"
    return "server" if pid == top else "serving"


def thread_cpu(pid: int) -> dict[tuple[str, int], float]:
    """CPU seconds per thread, keyed by (the process's role, thread id), descendants included."""
    found: dict[tuple[str, int], float] = {}
    for process in descendants(pid):
        label = role(process, pid)
        try:
            tasks = os.listdir(f"/proc/{process}/task")
        except FileNotFoundError:
            continue  # a child that exited since pgrep saw it
        for task in tasks:
            try:
                with open(f"/proc/{process}/task/{task}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[(label, int(task))] = (int(fields[11]) + int(fields[12])) / TICK
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
    spent = {key: after[key] - before.get(key, 0.0) for key in after}
    total = sum(spent.values())
    roles: dict[str, list[float]] = {}
    for (label, _), seconds in spent.items():
        roles.setdefault(label, []).append(seconds)
    detail = "  ".join(
        f"{label} {sum(threads) / requests * 1e6:.1f} ("
        + " ".join(f"{t / requests * 1e6:.1f}" for t in sorted(threads, reverse=True) if t > 0)
        + ")"
        for label, threads in sorted(roles.items(), key=lambda item: -sum(item[1]))
        if sum(threads) > 0
    )
    print(f"{name:<16} {requests:>7} requests  {total / requests * 1e6:6.1f} µs CPU/request   {detail}")


def main() -> None:
    for arg in sys.argv[1:]:
        name, target = arg.split("=", 1)
        port, pid = target.split(":")
        measure(name, int(port), int(pid))


if __name__ == "__main__":
    main()
