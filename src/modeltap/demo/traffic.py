"""The demo's client: phases of in-distribution and drifted traffic, plus malformed requests."""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import orjson

from modeltap.demo.model_server import make_customers


@dataclass(frozen=True)
class Phase:
    name: str
    share: float  # of the run's duration
    shift: dict[str, float] = field(default_factory=dict)  # feature -> mean shift in std units
    malformed_every: int = 0  # one malformed request in this many (0 = none)


PHASES = (
    Phase("baseline", 0.5),
    Phase("covariate shift", 0.5, shift={"monthly_charges": 1.0, "support_calls": 1.5}, malformed_every=25),
)


@dataclass
class TrafficStats:
    sent: int = 0
    failed: int = 0
    phase: str = ""
    phase_started: dict[str, float] = field(default_factory=dict)


def run_traffic(
    port: int, duration_s: float, rate_per_s: float, stop: threading.Event, stats: TrafficStats
) -> None:
    """Send requests at `rate_per_s` for `duration_s`, phase by phase, over one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    path = "/v1/models/churn:predict"
    headers = {"content-type": "application/json"}
    seed = 100
    for phase in PHASES:
        stats.phase = phase.name
        stats.phase_started[phase.name] = time.time()
        phase_end = time.monotonic() + duration_s * phase.share
        pool = make_customers(4096, seed, shift=phase.shift)
        seed += 1
        i = 0
        while time.monotonic() < phase_end and not stop.is_set():
            started = time.monotonic()
            if phase.malformed_every and i % phase.malformed_every == phase.malformed_every - 1:
                body = b'{"instances": [[1.0, "n/a", 3.0'  # truncated JSON: a counted decode_error
            else:
                rows = pool[np.random.default_rng(i).integers(0, len(pool), 4)]
                body = orjson.dumps({"instances": rows.round(3).tolist()})
            try:
                connection.request("POST", path, body=body, headers=headers)
                connection.getresponse().read()
                stats.sent += 1
            except (OSError, http.client.HTTPException):
                stats.failed += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            i += 1
            delay = 1.0 / rate_per_s - (time.monotonic() - started)
            if delay > 0:
                stop.wait(delay)
    connection.close()
