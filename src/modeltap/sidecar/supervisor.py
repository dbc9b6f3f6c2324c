"""`modeltap sidecar --workers N`: N data-plane processes on one port, one monitor for all.

The supervisor binds N proxy sockets with SO_REUSEPORT (the kernel spreads connections over
them) and the admin socket, then starts N data planes: the same command line, each told by an
environment variable which two inherited sockets are its own, all naming one monitor id. The
first data plane that finds no monitor starts it and hands it the admin socket; the others join.
A data plane that dies is started again on the same socket. SIGTERM or SIGINT is passed on to
every data plane (each drains, then the monitor flushes once all have left); the supervisor exits
when they have, and the monitor with them: it is made the subreaper of its descendants, so a
monitor whose data plane died is its child from then on, reaped when it exits and waited for at
the end (as PID 1 of a container, its exit would otherwise end the monitor's last export).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from modeltap.config import ModelTapConfig
from modeltap.errors import ConfigError
from modeltap.operations.proc_stat import stat_fields
from modeltap.sidecar.runner import WORKER_SOCKETS_VARIABLE, listen
from modeltap.sidecar.settings import SidecarSettings

_log = logging.getLogger("modeltap.sidecar")
# A data plane that exits this soon after it started is failing at start-up: stop, do not loop.
FAILING_START_S = 2.0
# After the drain and the monitor's flush, how long the supervisor still waits for data planes.
EXIT_MARGIN_S = 2.0
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


@dataclass
class _DataPlane:
    index: int
    proxy: int  # the inherited socket's file descriptor
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0


def run_supervisor(settings: SidecarSettings, monitoring: ModelTapConfig) -> None:
    if monitoring.monitor != "process":
        raise ConfigError(
            "workers > 1 needs the monitor process (the data planes share its numbers); "
            "unset MODELTAP_MONITOR=inline or run one worker",
            "workers",
        )
    first = listen(settings.host, settings.port, "port", reuse_port=True)
    port = first.getsockname()[1]
    proxies = [first]
    try:
        proxies += [listen(settings.host, port, "port", reuse_port=True) for _ in range(settings.workers - 1)]
        admin = listen(settings.admin_host, settings.admin_port, "admin_port")
    except ConfigError:
        for sock in proxies:
            sock.close()
        raise
    environment = dict(os.environ)
    environment["MODELTAP_MONITOR_ID"] = monitoring.monitor_id or f"sidecar-{os.getpid()}"
    planes = [_DataPlane(i, sock.fileno()) for i, sock in enumerate(proxies)]
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for plane in planes:
            if plane.process is not None and plane.process.poll() is None:
                with contextlib.suppress(OSError):
                    plane.process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _become_subreaper()

    def start(plane: _DataPlane) -> None:
        env = {**environment, WORKER_SOCKETS_VARIABLE: f"{plane.proxy},{admin.fileno()}"}
        # The same command line: each data plane reads the same flags, variables and file.
        plane.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "modeltap.cli", *sys.argv[1:]],
            pass_fds=(plane.proxy, admin.fileno()),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        plane.started = time.monotonic()

    for plane in planes:
        start(plane)
    print(
        f"modeltap sidecar: http://{settings.host}:{port} -> {settings.upstream} "
        f"({settings.workers} workers); admin http://{settings.admin_host}:{admin.getsockname()[1]} "
        "(/healthz /readyz /status /metrics)",
        flush=True,
    )
    bound: float | None = None
    while True:
        running = [p for p in planes if p.process is not None and p.process.poll() is None]
        _reap_adopted(planes)
        if stopping:
            if bound is None:
                export = monitoring.export
                bound = time.monotonic() + settings.drain_delay_s + settings.drain_timeout_s
                bound += export.shutdown_timeout_s + EXIT_MARGIN_S
            # The data planes, then a monitor this process adopted: it exports once they left.
            if (not running and not _adopted(planes)) or time.monotonic() >= bound:
                break
        else:
            for plane in planes:
                process = plane.process
                if process is None or process.poll() is None:
                    continue
                if time.monotonic() - plane.started < FAILING_START_S:
                    _log.error("modeltap sidecar: worker %d failed at start-up; stopping", plane.index)
                    on_signal(signal.SIGTERM, None)
                    break
                code = process.returncode
                _log.warning("modeltap sidecar: worker %d exited (code %s); restarting it", plane.index, code)
                start(plane)
        time.sleep(0.1)
    for plane in planes:
        if plane.process is not None and plane.process.poll() is None:
            plane.process.kill()
            plane.process.wait(5)
    for sock in (*proxies, admin):
        sock.close()


def _become_subreaper() -> None:
    """Adopt orphaned descendants (a monitor whose data plane died) instead of init, so that they
    are reaped here and waited for at the end. Best effort: Linux only."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _plane_pids(planes: list[_DataPlane]) -> set[int]:
    return {plane.process.pid for plane in planes if plane.process is not None}


def _reap_adopted(planes: list[_DataPlane]) -> None:
    """Reap the adopted children that exited (not the data planes: `Popen` reaps those)."""
    own = _plane_pids(planes)
    while True:
        try:
            exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if exited is None or exited.si_pid in own:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(exited.si_pid, 0)


def _adopted(planes: list[_DataPlane]) -> list[int]:
    """This process's children that are not its data planes, still running: adopted monitors."""
    own, me, found = _plane_pids(planes), os.getpid(), []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in own:
                continue
            fields = stat_fields(entry)
            if fields is not None and len(fields) > 1 and fields[1] == str(me) and fields[0] != "Z":
                found.append(int(entry))
    return found
