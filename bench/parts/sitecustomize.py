"""Variants of the serving process for `run_monitor_parts.sh` and `run_sidecar_parts.sh`: with
`bench/parts` on PYTHONPATH, `MODELTAP_BENCH_PART` takes one part of the hand-off away, to
measure what it costs the serving core. A benchmark tool only: never installed, never imported
by modeltap.

  noship   the shipper thread never starts: records are captured and encoded, then dropped at
           the full queue (no thread, no socket, no monitor)
  nosend   the shipper thread drains the queue and discards the records (its wake-ups and the
           interpreter hand-overs stay; no `sendmsg`, no monitor work)
  idle     the monitor process runs under SCHED_IDLE instead of nice 10
  slice    the monitor process asks for CPU slices of 0.1 ms (`sched_attr.sched_runtime`, honoured
           for normal tasks by Linux 6.12 and later), at nice 10 as shipped
"""

import os

_PART = os.environ.get("MODELTAP_BENCH_PART", "")

if _PART in ("noship", "nosend"):
    from modeltap.handoff import shipper as _shipper

    if _PART == "noship":
        _shipper.Shipper.start = lambda self: None  # type: ignore[method-assign]
    else:

        def _discard(self: _shipper.Shipper) -> bool:
            drained = False
            while self._queue.drain(_shipper.BATCH_RECORDS, _shipper.BATCH_BYTES):
                drained = True
            return drained

        _shipper.Shipper._ship = _discard  # type: ignore[method-assign]
elif _PART == "idle":
    from modeltap.monitor import resources as _resources

    _lower_priority = _resources.lower_priority

    def _idle(environ: dict[str, str] | None = None) -> None:
        _lower_priority(environ)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    _resources.lower_priority = _idle
elif _PART == "slice":
    import ctypes
    import struct

    from modeltap.monitor import resources as _resources

    _lower_priority = _resources.lower_priority

    def _short_slices(environ: dict[str, str] | None = None) -> None:
        _lower_priority(environ)
        # struct sched_attr (SCHED_ATTR_SIZE_VER0): size, policy, flags, nice, priority, runtime,
        # deadline, period; SCHED_OTHER at the nice the monitor has, a 0.1 ms slice.
        attr = struct.pack("=IIQiIQQQ", 48, 0, 0, os.getpriority(os.PRIO_PROCESS, 0), 0, 100_000, 0, 0)
        libc = ctypes.CDLL(None, use_errno=True)
        buffer = ctypes.create_string_buffer(attr)
        if libc.syscall(314, 0, buffer, 0) != 0:  # sched_setattr on x86_64
            raise OSError(ctypes.get_errno(), "sched_setattr")

    _resources.lower_priority = _short_slices
