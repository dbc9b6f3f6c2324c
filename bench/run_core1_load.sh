#!/bin/bash
# What work on the load generator's core costs the serving core, on this machine: the bare
# reference app pinned to core 0 under wrk (core 1), alone and with a CPU burner on core 1 that
# spins 1 ms out of every 7 (about the share of core 1 the monitor process takes under this load),
# at normal priority and at nice 10 (the monitor's). Prints requests/s and how busy core 0 was.
# Where cores 0 and 1 share a physical core (SMT siblings behind a VM's vCPUs) or its caches, the
# burner slows requests on core 0 although it never runs there: then the monitor's CPU per
# exchange counts against the serving core's throughput in every side-by-side ratio.
# Needs Debian's wrk.   usage: PY=$PWD/.venv/bin/python bench/run_core1_load.sh   Env: ROUNDS (3)
set -eu
PY=${PY:-python3}
case $PY in /*) ;; */*) PY=$PWD/$PY ;; esac  # the script works from bench/
cd "$(dirname "$0")"
port=18751
APP=bare taskset -c 0 "$PY" -m uvicorn apps:app --port $port --log-level error --no-access-log \
  --loop uvloop --http httptools >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
sleep 3
burn() {  # burn NICE: spin 1 ms of every 7 on core 1 for 5 s
  taskset -c 1 nice -n "$1" "$PY" -c '
import time
end = time.monotonic() + 5
while time.monotonic() < end:
    started = time.perf_counter()
    while time.perf_counter() - started < 0.001:
        pass
    time.sleep(0.006)
' &
}
measure() {  # measure NAME: 4 s of wrk; requests/s and core 0's busy share
  before=$(sed -n 2p /proc/stat)
  rps=$(taskset -c 1 wrk -t1 -c16 -d4s -s post.lua "http://127.0.0.1:$port/predict" | awk '/Requests\/sec/ {print $2}')
  after=$(sed -n 2p /proc/stat)
  python3 -c '
import sys
a = [int(x) for x in sys.argv[3].split()[1:]]
b = [int(x) for x in sys.argv[4].split()[1:]]
d = [j - i for i, j in zip(a, b)]
print(f"{sys.argv[1]:<20} requests/s {float(sys.argv[2]):8.0f}   core 0 busy {100 * (1 - (d[3] + d[4]) / sum(d)):5.1f} %")
' "$1" "$rps" "$before" "$after"
}
taskset -c 1 wrk -t1 -c16 -d2s -s post.lua "http://127.0.0.1:$port/predict" >/dev/null  # warm-up
for _ in $(seq "${ROUNDS:-3}"); do
  measure "core 1: wrk only"
  burn 0; measure "+ burner (nice 0)"; wait $!
  burn 10; measure "+ burner (nice 10)"; wait $!
done
