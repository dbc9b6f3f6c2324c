"""Run the demo: a model server, the modeltap sidecar in front of it, traffic in phases, a live
table, a per-phase summary, and full clean-up (also on Ctrl-C).

Everything runs in this process on 127.0.0.1: the model server on its own uvicorn thread, the
sidecar (`modeltap.sidecar.runner.Sidecar`, the same object `modeltap sidecar` runs) on its own
event-loop thread, the traffic on a third. The traffic goes to the sidecar's port; the status
page, `/status` and `/metrics` are on the sidecar's admin port.

Each phase is judged on its own traffic: the drift window is `window_slots` tumbling slots whose
total equals the phase length, and the verdict is read right after the phase's last request and
before the next phase's first. The window then ends at that moment and reaches back at most one
phase length, so it holds only the phase just finished. The phase's labels (the real outcomes) are
fed back between the two reads of a verdict: the first sees the performance estimated from the
scores before any label, the second the realised performance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import uvicorn

from modeltap.config import ModelTapConfig
from modeltap.demo.model_server import (
    LABEL,
    MODEL_NAME,
    MODEL_VERSION,
    PREDICTION,
    SCORE,
    ChurnModel,
    build_app,
    training_data,
    validation_data,
    write_training_csv,
)
from modeltap.demo.traffic import (
    MALFORMED_EVERY,
    PHASES,
    ROWS_PER_REQUEST,
    Phase,
    PhaseTraffic,
    TrafficGenerator,
    TrafficStats,
    describe,
)
from modeltap.export.status_json import status_document
from modeltap.reference.document import write_profile
from modeltap.reference.tables import profile_table
from modeltap.sidecar.runner import Sidecar, listen
from modeltap.sidecar.settings import SidecarSettings

# The levels reported as detected drift.
ALERT_LEVELS = ("WARNING", "CRITICAL")
# The `modeltap profile` command that builds the same reference from the demo's validation table.
PROFILE_COMMAND = (
    "modeltap profile {csv} -o {reference} --target churned --prediction prediction --score scores "
    "--numeric support_calls"
)
# How far the accuracy estimated from the scores (before any label) must be from the baseline to
# count as moved: the covariate shift moves it about 5 points, in-distribution traffic well under 1.
ESTIMATE_MOVES = 0.02


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 36.0
    rate_per_s: float = 100.0
    port: int = 0  # the sidecar's proxy port (0: any free port)
    admin_port: int = 0  # the sidecar's admin port: status page, /status, /metrics
    otlp_endpoint: str | None = None
    refresh_s: float | None = None  # live-table refresh; default: a fifth of a phase, at most 1 s
    workdir: str | None = None
    phases: tuple[Phase, ...] = PHASES
    window_slots: int = 5


@dataclass(frozen=True)
class Addresses:
    proxy_url: str
    admin_url: str
    model_url: str

    @property
    def status_page(self) -> str:
        return self.admin_url + "/"


@dataclass
class PhaseVerdict:
    """One phase, judged on a window holding only its own traffic."""

    phase: Phase
    start_s: float  # seconds into the run
    end_s: float
    window_count: int  # input rows in the window at the verdict
    levels: dict[str, str]  # input feature -> level at the end of the phase
    psi: dict[str, float | None]  # input features and "prediction"
    prediction_level: str | None
    since: dict[str, float]  # flagged feature (or "prediction") -> flagged since (s into the run)
    traffic: PhaseTraffic
    alerts: dict[str, str] = field(default_factory=dict)  # subject -> severity, fired in this phase
    # Performance: estimated from the scores before the phase's labels, realised after them.
    estimated_accuracy: float | None = None
    realised_accuracy: float | None = None
    window_labels: int = 0
    performance_level: str | None = None
    baseline_accuracy: float | None = None
    label_level: str | None = None  # the label distribution's drift (prior shift)
    label_psi: float | None = None
    # Business outcomes of the version the phase was routed to, after the phase's outcomes.
    conversion_rate: float | None = None
    baseline_conversion_rate: float | None = None
    baseline_source: str | None = None
    revenue_impact: dict[str, Any] | None = None
    business_level: str | None = None

    @property
    def flagged_inputs(self) -> frozenset[str]:
        return frozenset(name for name, level in self.levels.items() if level in ALERT_LEVELS)

    @property
    def prediction_flagged(self) -> bool:
        return self.prediction_level in ALERT_LEVELS

    @property
    def performance_flagged(self) -> bool:
        return self.performance_level in ALERT_LEVELS

    @property
    def estimate_moved(self) -> bool | None:
        if self.estimated_accuracy is None or self.baseline_accuracy is None:
            return None
        return abs(self.estimated_accuracy - self.baseline_accuracy) >= ESTIMATE_MOVES

    @property
    def as_expected(self) -> bool:
        """Covariate shift: exactly the shifted inputs flagged, and the estimate moved before any
        label. Prior shift: the prediction flagged. Concept drift: no drift, an estimate that
        did not move, and the realised performance CRITICAL. A new version that converts worse:
        no drift, the business level EMERGENCY. No shift: nothing flagged."""
        phase = self.phase
        if (self.business_level == "EMERGENCY") != phase.expects_business_drop:
            return False
        if phase.judged_by_inputs and self.flagged_inputs != phase.expected_inputs:
            return False
        if phase.expects_prediction_drift and not self.prediction_flagged:
            return False
        if phase.shift and self.estimate_moved is not True:
            return False
        if phase.expects_performance_drop:
            return (
                not self.prediction_flagged
                and self.estimate_moved is False
                and self.performance_level == "CRITICAL"
            )
        quiet = not phase.shift and phase.churn_share is None
        return not (quiet and (self.prediction_flagged or self.performance_flagged))


@dataclass
class DemoResult:
    addresses: Addresses | None = None
    workdir: Path | None = None
    slot_s: float = 0.0
    window_slots: int = 0
    phases: list[PhaseVerdict] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)  # the last /status document
    traffic: TrafficStats = field(default_factory=TrafficStats)
    interrupted: bool = False
    elapsed_s: float = 0.0
    leftovers: list[str] = field(default_factory=list)  # what did not stop (should stay empty)
    workdir_removed: bool = False  # the temporary directory (no workdir given) is gone

    @property
    def window_s(self) -> float:
        return self.slot_s * self.window_slots


def _number(value: float | None, width: int, digits: int = 3) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else " " * (width - 1) + "-"


def _ms(value: float | None) -> str:
    return f"{value * 1000:7.2f} ms" if value is not None else "      - ms"


def render_table(
    document: dict[str, Any],
    *,
    phase: str,
    elapsed_s: float,
    duration_s: float,
    addresses: Addresses,
    traffic: TrafficStats,
    since: dict[str, float] | None = None,
) -> str:
    """The live table: one screen of what the sidecar's /status says right now."""
    since = since or {}
    latency = document["latency_s"]
    versions = ", ".join(document["model"]["versions"]) or "-"
    client_4xx = sum(n for p in traffic.by_phase.values() for s, n in p.statuses.items() if 400 <= s < 500)
    proxy_errors = sum((document.get("proxy_errors") or {}).values())
    lines = [
        f"modeltap demo  phase: {phase}  t = {elapsed_s:5.1f} s of {duration_s:g} s",
        f"model {MODEL_NAME} version {versions}  "
        f"sidecar {addresses.proxy_url} -> model {addresses.model_url}",
        f"status page {addresses.status_page}   (JSON: {addresses.admin_url}/status)",
        f"level {document['level']:<9} requests {document['requests']['total']:>6}  "
        f"errors {document['requests']['errors']:>3}  model 4xx {client_4xx:>4}  "
        f"violations {sum(document['violations'].values()):>4}  "
        f"dropped {document['requests']['dropped']:>3}  "
        f"proxy errors {proxy_errors:>3}",
        f"latency p50 {_ms(latency['p50'])}  p95 {_ms(latency['p95'])}  p99 {_ms(latency['p99'])}  "
        f"window {document['window_s']:g} s",
    ]
    performance = _performance(document, MODEL_VERSION)
    if performance is not None:
        window = performance["window"]
        lines.append(
            f"accuracy: realised {_number(_accuracy(window), 5)} from {window['labels']:>5} labels "
            f"({performance['level']}), "
            f"estimated from the scores {_number(_accuracy(performance['estimated']), 5)}, "
            f"baseline {_number(performance['baseline']['accuracy'], 5)}"
        )
    for business in document.get("business", []):
        rate = business["window"]["conversion_rate"]
        lines.append(
            f"business: version {business['version']} offers accepted "
            f"{'-' if rate is None else f'{rate:.1%}'} in the window ({business['level']})"
        )
    lines += [
        "",
        f"{'feature':<17}{'role':<8}{'window n':>9}{'PSI':>8}{'JS':>7}{'KS p':>10}  "
        f"{'level':<9} flagged since",
    ]
    for feature in document["features"]:
        pvalue = feature["ks_pvalue"] if feature["ks_pvalue"] is not None else feature["chi2_pvalue"]
        flagged = f"{since[feature['name']]:.1f} s" if feature["name"] in since else ""
        lines.append(
            f"{feature['name']:<17}{feature['role']:<8}{feature['window_count']:>9}"
            f"{_number(feature['psi'], 8)}{_number(feature['js'], 7)}"
            f"{(f'{pvalue:10.1e}' if pvalue is not None else ' ' * 9 + '-')}  "
            f"{feature['level'] or '-':<9} {flagged}"
        )
    return "\n".join(lines)


def _performance(document: dict[str, Any], version: str) -> dict[str, Any] | None:
    """The demo model's performance entry in /status for `version`."""
    return next(
        (p for p in document.get("performance", []) if p["model"] == MODEL_NAME and p["version"] == version),
        None,
    )


def _business(document: dict[str, Any], version: str) -> dict[str, Any] | None:
    return next((b for b in document.get("business", []) if b["version"] == version), None)


def _features(document: dict[str, Any], version: str) -> list[dict[str, Any]]:
    """The features of `version` (the top level has the busiest version's)."""
    for model in document.get("models", []):
        if model["name"] == MODEL_NAME and model["version"] == version:
            features: list[dict[str, Any]] = model["features"]
            return features
    top: list[dict[str, Any]] = document["features"]
    return top


def _accuracy(numbers: dict[str, Any] | None) -> float | None:
    value = (numbers or {}).get("accuracy")
    return float(value) if value is not None else None


def _alerts(document: dict[str, Any], version: str = MODEL_VERSION) -> dict[str, str]:
    """Monitored inputs and the prediction of `version` -> level."""
    return {
        f["name"]: f["level"]
        for f in _features(document, version)
        if f["level"] is not None and (f["role"] == "input" or f["name"] == PREDICTION)
    }


class _ThreadServer(uvicorn.Server):
    """uvicorn without its own signal handling: the demo's main thread owns Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Demo:
    """The running demo's parts; `close()` stops whatever was started, in reverse order."""

    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        shares = [p.share for p in options.phases]
        self.phase_s = [options.duration_s * s / sum(shares) for s in shares]
        # The window spans the shortest phase exactly, so a verdict sees only its own phase.
        self.window_slots = options.window_slots
        self.slot_s = min(self.phase_s) / self.window_slots
        self.refresh_s = options.refresh_s or min(1.0, max(0.2, min(self.phase_s) / 5))
        # Without a workdir the files go to a temporary directory made by prepare() and removed by
        # run_demo whatever happens (failed start, exception, Ctrl-C, SIGTERM).
        self.workdir: Path | None = Path(options.workdir) if options.workdir else None
        self.temporary_workdir: Path | None = None
        self.addresses: Addresses | None = None
        self.sidecar: Sidecar | None = None
        self._sidecar_loop: asyncio.AbstractEventLoop | None = None
        self._sidecar_thread: threading.Thread | None = None
        self._sidecar_failure: list[BaseException] = []
        self._model_server: _ThreadServer | None = None
        self._model_thread: threading.Thread | None = None
        self._model_socket: Any = None
        self.traffic: TrafficGenerator | None = None
        self.min_samples = 0  # what a level needs in its window (the monitoring's, once started)

    # ---- start ----------------------------------------------------------------------------

    def prepare(self) -> tuple[ChurnModel, Path]:
        """Train the model and write a labelled validation table and its reference profile."""
        if self.workdir is None:
            self.temporary_workdir = Path(tempfile.mkdtemp(prefix="modeltap-demo-"))
            self.workdir = self.temporary_workdir
        x, y = training_data()
        model = ChurnModel.train(x, y)
        self.workdir.mkdir(parents=True, exist_ok=True)
        csv_path = self.workdir / "validation.csv"
        write_training_csv(csv_path, *validation_data(), model)
        # Exactly what `modeltap profile` does (PROFILE_COMMAND): the features, the model's answer
        # (role output, so the prediction's drift is monitored), the label (for label drift and
        # the baseline accuracy) and the score's calibration (for the estimate before labels).
        reference = profile_table(
            csv_path,
            target=LABEL,
            prediction=[PREDICTION],
            score=SCORE,
            numeric=["support_calls"],
            model_name=MODEL_NAME,
        )
        reference_path = self.workdir / "reference.json"
        write_profile(reference, reference_path)
        return model, reference_path

    def monitoring_config(self, reference_path: Path) -> ModelTapConfig:
        env = dict(os.environ)
        if self.options.otlp_endpoint:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.options.otlp_endpoint
            env.setdefault("OTEL_METRIC_EXPORT_INTERVAL", "5000")
            env.setdefault("OTEL_SERVICE_NAME", "modeltap-demo")
        return ModelTapConfig.from_env(
            env,
            model_name=MODEL_NAME,
            reference=str(reference_path),
            window_slots=self.window_slots,
            window_slot_s=self.slot_s,
            views_prefix=None,  # the sidecar serves the views on its admin port
            worker_cpu_budget=0.0,  # the demo owns the machine: decode every payload
            # Alerts within the phase: fire on the first CRITICAL or WARNING snapshot, resolve once
            # a slot has passed below it (production defaults: 30 s and 30 s).
            alert_for_s=0.0,
            alert_group_wait_s=0.0,
            alert_resolve_s=self.slot_s,
            # The business level is judged on every snapshot, dozens of looks a phase: a strict
            # significance keeps chance dips of the baseline version quiet (version 2's drop is
            # some 10 standard errors).
            business_alpha=1e-4,
            outcome_names=("conversion", "order_value"),  # the offers' results, fed to /outcome
        )

    def start(self, model: ChurnModel, reference_path: Path) -> None:
        monitoring = self.monitoring_config(reference_path)
        self.min_samples = monitoring.min_samples
        self._model_socket = listen("127.0.0.1", 0, "model port")
        model_port = int(self._model_socket.getsockname()[1])
        settings = SidecarSettings(
            upstream=f"http://127.0.0.1:{model_port}",
            host="127.0.0.1",
            port=self.options.port,
            admin_host="127.0.0.1",
            admin_port=self.options.admin_port,
            drain_delay_s=0.0,
            drain_timeout_s=2.0,
            probe_interval_s=0.5,
            log_level="warning",
        )
        # The monitor's sockets live in the temporary directory too, so nothing is left behind.
        run_directory = None
        if self.temporary_workdir is not None:
            run_directory = self.temporary_workdir / "run"
            run_directory.mkdir(mode=0o700)
        sidecar = Sidecar(settings, monitoring, run_directory)
        sidecar.bind()  # a port in use fails here, before anything runs
        self.sidecar = sidecar
        self.addresses = Addresses(
            proxy_url=f"http://127.0.0.1:{sidecar.port}",
            admin_url=f"http://127.0.0.1:{sidecar.admin_port}",
            model_url=f"http://127.0.0.1:{model_port}",
        )
        self._start_model(model)
        self._start_sidecar(sidecar)

    def _start_model(self, model: ChurnModel) -> None:
        config = uvicorn.Config(
            build_app(model), log_level="warning", lifespan="off", access_log=False, timeout_keep_alive=30
        )
        server = _ThreadServer(config)
        self._model_server = server
        self._model_thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [self._model_socket]},
            name="modeltap-demo-model",
            daemon=True,
        )
        self._model_thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._model_thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the demo's model server did not start")
            time.sleep(0.01)

    def _start_sidecar(self, sidecar: Sidecar) -> None:
        try:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
            loop = asyncio.new_event_loop()
        self._sidecar_loop = loop
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(sidecar.serve(on_ready=ready.set))
                loop.run_until_complete(loop.shutdown_default_executor())
            except BaseException as exc:  # reported by start() or close()
                self._sidecar_failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._sidecar_thread = threading.Thread(target=run, name="modeltap-demo-sidecar", daemon=True)
        self._sidecar_thread.start()
        if not ready.wait(10) or self._sidecar_failure:
            raise RuntimeError(f"the sidecar did not start: {self._sidecar_failure[:1]!r}")
        # The first requests should find the model reachable, and the monitor process (which
        # serves the admin port) up: asked as a load balancer would.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self._admin_get("/readyz")[0] != 200:
            time.sleep(0.05)

    # ---- run ------------------------------------------------------------------------------

    def read(self, flush_timeout_s: float = 2.0) -> dict[str, Any]:
        """The sidecar's /status document, with everything sent so far processed and scored."""
        assert self.sidecar is not None
        # A flush processes the queue and recomputes the scores (the snapshot is published
        # before the export part, which may time out against a slow collector).
        self.sidecar.tap.flush(flush_timeout_s)
        if not self.sidecar.process_mode:
            return status_document(self.sidecar.tap.latest_snapshot(), MODEL_NAME)
        status, body = self._admin_get("/status")
        if status != 200:
            raise RuntimeError(f"the sidecar's /status answered {status}")
        document: dict[str, Any] = json.loads(body)
        return document

    def _admin_get(self, path: str) -> tuple[int, bytes]:
        """GET from the admin port (served by the monitor process); (0, b"") when unreachable."""
        assert self.addresses is not None
        try:
            with urllib.request.urlopen(self.addresses.admin_url + path, timeout=5) as response:  # noqa: S310
                return int(response.status), response.read()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read()
        except OSError:
            return 0, b""

    def close(self) -> list[str]:
        """Stop traffic, sidecar (drains, flushes telemetry) and model server; close every port.
        Returns the names of threads that did not stop in time (none, normally)."""
        if self.traffic is not None:
            self.traffic.close()
        if self._sidecar_thread is not None and self._sidecar_loop is not None and self.sidecar is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._sidecar_loop.call_soon_threadsafe(self.sidecar.stop)
            self._sidecar_thread.join(15)
        elif self.sidecar is not None:  # bound, never served
            for sock in (self.sidecar.proxy_socket, self.sidecar.admin_socket):
                if sock is not None:
                    sock.close()
        if self._model_server is not None and self._model_thread is not None:
            self._model_server.should_exit = True
            self._model_thread.join(10)
        if self._model_socket is not None:
            self._model_socket.close()
        threads = (self._sidecar_thread, self._model_thread)
        return [thread.name for thread in threads if thread is not None and thread.is_alive()]

    def remove_temporary_workdir(self) -> bool:
        """Remove the temporary directory, if prepare() made one; True when one was removed."""
        path = self.temporary_workdir
        if path is None:
            return False
        with _signals_deferred():  # a second Ctrl-C must not leave half a directory behind
            shutil.rmtree(path, ignore_errors=True)
        self.temporary_workdir = None
        return not path.exists()


def _elapsed(started: float) -> float:
    return time.monotonic() - started


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM cleans up like Ctrl-C (only the main thread can own signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done (they are delivered right after it)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def run_demo(
    options: DemoOptions,
    out: TextIO = sys.stdout,
    *,
    stop: threading.Event | None = None,
    on_ready: Callable[[Addresses], None] | None = None,
) -> DemoResult:
    """Run the whole demo and print its summary; returns what was judged (also used by tests).

    `stop` ends the run early (as Ctrl-C does); `on_ready` is called with the addresses once
    the model server and the sidecar serve.
    """
    stop = stop or threading.Event()
    demo = Demo(options)
    result = DemoResult(workdir=demo.workdir, slot_s=demo.slot_s, window_slots=demo.window_slots)
    with _sigterm_as_interrupt():
        try:
            _run(demo, options, result, stop, out, on_ready)
        finally:
            # Also when start-up failed or a second signal cut the clean-up short.
            result.workdir_removed = demo.remove_temporary_workdir()
    print(summarize(result), file=out, flush=True)
    return result


def _run(
    demo: Demo,
    options: DemoOptions,
    result: DemoResult,
    stop: threading.Event,
    out: TextIO,
    on_ready: Callable[[Addresses], None] | None,
) -> None:
    """Prepare, start, run the phases; on any end, read the last /status and stop everything."""
    started = time.monotonic()
    interactive = out.isatty()
    try:
        model, reference_path = demo.prepare()
        result.workdir = demo.workdir
        demo.start(model, reference_path)
        assert demo.addresses is not None
        result.addresses = demo.addresses
        _banner(out, demo, reference_path)
        if on_ready is not None:
            on_ready(demo.addresses)
        started = time.monotonic()
        demo.traffic = TrafficGenerator(
            int(demo.addresses.proxy_url.rsplit(":", 1)[1]),
            options.rate_per_s,
            result.traffic,
            admin_port=int(demo.addresses.admin_url.rsplit(":", 1)[1]),
        )
        for index, (phase, phase_s) in enumerate(zip(options.phases, demo.phase_s, strict=True)):
            if stop.is_set():
                break
            label = f"{index + 1}/{len(options.phases)} {phase.name} ({describe(phase)})"
            result.phases.append(
                _run_phase(demo, phase, phase_s, label, started, stop, result, out, interactive)
            )
    except KeyboardInterrupt:
        result.interrupted = True
        stop.set()
        print("\ninterrupted: stopping the traffic, the sidecar and the model server", file=out, flush=True)
    finally:
        stop.set()
        try:
            if demo.sidecar is not None and demo.sidecar.tap.started:
                result.final = demo.read()
        finally:
            result.elapsed_s = _elapsed(started)
            result.leftovers = demo.close()


def too_short(options: DemoOptions, phase_s: list[float], min_samples: int) -> str | None:
    """A warning when the shortest phase sends fewer customers than a level needs in its window
    (`min_samples`): its verdicts would then say "NOT as expected" for want of data."""
    # Malformed requests carry no values the statistics keep, and a phase is judged as it ends,
    # its window's last slot still filling: about one slot's customers are not in it yet.
    slots = options.window_slots
    kept = (1 - 1 / MALFORMED_EVERY) * ((slots - 1) / slots if slots > 1 else 1.0)
    customers = options.rate_per_s * ROWS_PER_REQUEST * min(phase_s) * kept
    if customers >= min_samples:
        return None
    if customers <= 0:
        return f"note: no customers are sent (--rate {options.rate_per_s:g}): nothing will be judged."
    # The run that gives the shortest phase enough customers, rounded up.
    needed_s = math.ceil(options.duration_s * min_samples / customers)
    return (
        f"note: the shortest phase is judged on about {customers:.0f} customers, and a drift level "
        f"needs {min_samples} values in its window: phases will be judged on too little data. Run for "
        f"at least {needed_s:.0f} s at this rate (--duration), or raise --rate."
    )


def _banner(out: TextIO, demo: Demo, reference_path: Path) -> None:
    assert demo.addresses is not None
    options = demo.options
    a = demo.addresses
    print(f"model server (churn, KServe V1)  {a.model_url}/v1/models/churn:predict", file=out)
    print(f"modeltap sidecar in front of it  {a.proxy_url}/v1/models/churn:predict", file=out)
    print(f"status page                      {a.status_page}", file=out)
    print(f"  /status JSON, Prometheus text  {a.admin_url}/status  {a.admin_url}/metrics", file=out)
    assert demo.workdir is not None
    csv_path = demo.workdir / "validation.csv"
    if demo.temporary_workdir is not None:
        print(
            "validation data and reference in a temporary directory, removed at the end "
            "(--workdir keeps them)",
            file=out,
        )
    print(f"validation data (labelled)       {csv_path}", file=out)
    print(f"reference profile                {reference_path}", file=out)
    print(f"  (the same as: {PROFILE_COMMAND.format(csv=csv_path, reference=reference_path)})", file=out)
    if options.otlp_endpoint:
        print(f"OTLP export to                   {options.otlp_endpoint}", file=out)
    print(
        f"drift window: {demo.window_slots} slots of {demo.slot_s:.3g} s = one phase, "
        "so each phase is judged on its own traffic",
        file=out,
    )
    print(
        f"traffic: {options.rate_per_s:g} requests/s, {ROWS_PER_REQUEST} customers each, "
        f"for {options.duration_s:g} s:",
        file=out,
    )
    for phase, phase_s in zip(options.phases, demo.phase_s, strict=True):
        print(f"  {phase_s:5.1f} s  {phase.name:<16} {phase.note or describe(phase)}", file=out)
    shortfall = too_short(options, demo.phase_s, demo.min_samples)
    if shortfall is not None:
        print(shortfall, file=out)
    print(
        f"  plus malformed requests throughout (1 in {MALFORMED_EVERY}): "
        "truncated JSON, text for a number, a short row, NaN",
        file=out,
    )
    print(
        f"  each request has an x-request-id; after each phase its outcomes go to {a.admin_url}/feedback\n",
        file=out,
    )
    out.flush()


def _run_phase(
    demo: Demo,
    phase: Phase,
    phase_s: float,
    label: str,
    started: float,
    stop: threading.Event,
    result: DemoResult,
    out: TextIO,
    interactive: bool,
) -> PhaseVerdict:
    assert demo.traffic is not None
    assert demo.addresses is not None
    start_s = _elapsed(started)
    phase_start_unix = time.time()
    since: dict[str, float] = {}
    fired: dict[str, str] = {}

    def track(document: dict[str, Any]) -> None:
        now = _elapsed(started)
        for name, level in _alerts(document, phase.version).items():
            if level in ALERT_LEVELS:
                since.setdefault(name, now)
            else:
                since.pop(name, None)
        for alert in document.get("alerts", []):
            # Alerts this phase set off on the version it was routed to (not those still firing
            # from the phase before, nor the tail of the previous phase on another version).
            if (
                alert["state"] == "firing"
                and alert["since_unix_s"] >= phase_start_unix
                and alert["version"] == phase.version
            ):
                fired[alert["subject"]] = alert["severity"]

    thread = threading.Thread(
        target=demo.traffic.run_phase, args=(phase, phase_s, stop), name="modeltap-demo-traffic", daemon=True
    )
    thread.start()
    try:
        while thread.is_alive():
            thread.join(demo.refresh_s)
            document = demo.read(flush_timeout_s=min(0.5, demo.refresh_s))
            track(document)
            table = render_table(
                document,
                phase=label,
                elapsed_s=_elapsed(started),
                duration_s=demo.options.duration_s,
                addresses=demo.addresses,
                traffic=result.traffic,
                since=since,
            )
            out.write(("\x1b[H\x1b[2J" + table + "\n") if interactive else table + "\n\n")
            out.flush()
    finally:
        if thread.is_alive():  # interrupted
            stop.set()
            thread.join(5)
    # The verdict: the phase's last request is in, the next phase has not begun. First what the
    # phase's predictions say before any of its labels, then the labels (the real outcomes) are
    # fed back and the realised performance read.
    end_s = _elapsed(started)
    before = demo.read()
    track(before)
    estimated = _performance(before, phase.version)
    if not stop.is_set():
        demo.traffic.feed_labels(phase)
    document = demo.read()
    track(document)
    alerts = _alerts(document, phase.version)
    version_features = _features(document, phase.version)
    features = {f["name"]: f for f in version_features}
    performance = _performance(document, phase.version)
    business = _business(document, phase.version)
    label_drift = next((f for f in version_features if f["role"] == "label"), None)
    return PhaseVerdict(
        phase=phase,
        start_s=start_s,
        end_s=end_s,
        window_count=max((f["window_count"] for f in version_features if f["role"] == "input"), default=0),
        levels={name: level for name, level in alerts.items() if name != PREDICTION},
        psi={name: features[name]["psi"] for name in alerts},
        prediction_level=alerts.get(PREDICTION),
        since={name: since.get(name, end_s) for name, level in alerts.items() if level in ALERT_LEVELS},
        traffic=result.traffic.by_phase.get(phase.name, PhaseTraffic()),
        alerts=dict(fired),
        estimated_accuracy=_accuracy(estimated["estimated"]) if estimated else None,
        realised_accuracy=_accuracy(performance["window"]) if performance else None,
        window_labels=int(performance["window"]["labels"]) if performance else 0,
        performance_level=performance["level"] if performance else None,
        baseline_accuracy=performance["baseline"]["accuracy"] if performance else None,
        label_level=label_drift["level"] if label_drift else None,
        label_psi=label_drift["psi"] if label_drift else None,
        conversion_rate=business["window"]["conversion_rate"] if business else None,
        baseline_conversion_rate=business["baseline"].get("conversion_rate") if business else None,
        baseline_source=business["baseline"]["source"] if business else None,
        revenue_impact=business["revenue_impact"] if business else None,
        business_level=business["level"] if business else None,
    )


def _when(verdict: PhaseVerdict, name: str) -> str:
    at = verdict.since.get(name, verdict.end_s)
    return f"detected at {at:.1f} s, {at - verdict.start_s:.1f} s into the phase"


def _flagged(verdict: PhaseVerdict, names: frozenset[str] | set[str]) -> str:
    if not names:
        return "none"
    return ", ".join(
        f"{name} ({verdict.levels[name]}, PSI {verdict.psi.get(name) or 0:.2f}, {_when(verdict, name)})"
        for name in sorted(names)
    )


def _performance_lines(verdict: PhaseVerdict) -> list[str]:
    """The estimate before the phase's labels, the realised accuracy after them, label drift."""
    lines: list[str] = []
    base = verdict.baseline_accuracy
    if verdict.estimated_accuracy is not None:
        moved = verdict.estimate_moved
        change = f" (baseline {base:.3f}: {'moved' if moved else 'unchanged'})" if base is not None else ""
        estimated = verdict.estimated_accuracy
        lines.append(f"    accuracy estimated from the scores before any label: {estimated:.3f}{change}")
    if verdict.realised_accuracy is not None:
        lines.append(
            f"    accuracy realised from {verdict.window_labels} labels fed back after the phase: "
            f"{verdict.realised_accuracy:.3f} ({verdict.performance_level})"
        )
    if verdict.label_level is not None:
        psi = f"PSI {verdict.label_psi:.2f}" if verdict.label_psi is not None else "PSI -"
        lines.append(f"    label drift ({LABEL}): {verdict.label_level} ({psi})")
    return lines


def _business_lines(verdict: PhaseVerdict) -> list[str]:
    """The offers accepted in the phase's window against the baseline, and what it costs."""
    rate = verdict.conversion_rate
    if rate is None:
        return []
    base = verdict.baseline_conversion_rate
    source = f"version {MODEL_VERSION}" if verdict.baseline_source == "version" else "its history"
    against = f" against {base:.1%} ({source})" if base is not None else ""
    line = f"    business: offers accepted {rate:.1%}{against}"
    impact = verdict.revenue_impact
    if impact is not None and verdict.baseline_source == "version":
        line += (
            f", revenue impact {impact['value']:+,.0f} over the window "
            f"(95 % {impact['ci_low']:+,.0f} to {impact['ci_high']:+,.0f})"
        )
    return [f"{line} ({verdict.business_level})"]


def summarize(result: DemoResult) -> str:
    lines = ["", "summary"]
    if result.slot_s:
        lines.append(
            f"  each phase judged on its own window ({result.window_slots} slots of {result.slot_s:.3g} s "
            f"= {result.window_s:.3g} s), read at the end of the phase"
        )
    baseline_share: float | None = None
    for verdict in result.phases:
        phase = verdict.phase
        traffic = verdict.traffic
        share = traffic.churn_share
        mean = traffic.mean_prediction
        if phase.name == "baseline":
            baseline_share = share
        lines.append(
            f"  {phase.name} ({verdict.start_s:.1f}-{verdict.end_s:.1f} s, {traffic.sent} requests, "
            f"{verdict.window_count} rows in the window): {describe(phase)}"
        )
        flagged = verdict.flagged_inputs
        if phase.judged_by_inputs:
            lines.append(f"    input drift: {_flagged(verdict, flagged)}")
            expected = sorted(phase.expected_inputs) or ["none"]
            lines.append(f"    expected:    {', '.join(expected)}")
        else:
            lines.append(
                f"    inputs that moved with the class balance: {', '.join(sorted(flagged)) or 'none'} "
                "(not judged: a prior shift moves every feature that carries class information)"
            )
        psi = verdict.psi.get(PREDICTION)
        detail = f"PSI {psi:.2f}" if psi is not None else "PSI -"
        if verdict.prediction_flagged:
            detail += ", " + _when(verdict, PREDICTION)
            if phase.shift:
                detail += "; it follows the shifted inputs"
        lines.append(f"    prediction drift: {verdict.prediction_level or '-'} ({detail})")
        if share is not None and mean is not None:
            change = (
                f" (baseline {baseline_share:.0%})"
                if baseline_share is not None and phase.name != "baseline"
                else ""
            )
            lines.append(f"    churn share sent {share:.0%}{change}, mean predicted churn {mean:.2f}")
        lines += _performance_lines(verdict)
        lines += _business_lines(verdict)
        fired = ", ".join(f"{subject} ({severity})" for subject, severity in sorted(verdict.alerts.items()))
        lines.append(f"    alerts fired: {fired or 'none'}")
        lines.append(f"    verdict: {'as expected' if verdict.as_expected else 'NOT as expected'}")
    stats = result.traffic
    final = result.final
    if final:
        sent_malformed = stats.malformed()
        violations = final.get("violations", {})
        lines.append(
            f"  requests: {stats.total('sent')} sent, {stats.total('failed')} failed to send; "
            f"seen by the sidecar: {final['requests']['total']}, dropped {final['requests']['dropped']}"
        )
        labels = final.get("labels") or {}
        lines.append(
            f"  labels fed back: {stats.total('labels_sent')}, accepted {stats.total('labels_accepted')}; "
            "counted by the monitor: "
            + (", ".join(f"{reason} {n}" for reason, n in sorted(labels.items())) or "none")
        )
        outcomes = final.get("outcomes") or {}
        lines.append(
            f"  business outcomes fed back: {stats.total('outcomes_sent')}, accepted "
            f"{stats.total('outcomes_accepted')}; counted by the monitor: "
            + (", ".join(f"{reason} {n}" for reason, n in sorted(outcomes.items())) or "none")
        )
        lines.append(
            "  malformed requests sent: "
            + (", ".join(f"{reason} {n}" for reason, n in sorted(sent_malformed.items())) or "none")
        )
        lines.append(
            "  data-quality violations counted: "
            + (", ".join(f"{reason} {n}" for reason, n in sorted(violations.items())) or "none")
        )
        proxy_errors = final.get("proxy_errors") or {}
        lines.append(
            "  sidecar errors: "
            + (", ".join(f"{code} {n}" for code, n in sorted(proxy_errors.items())) or "none")
        )
        latency = final["latency_s"]
        lines.append(
            f"  latency through the sidecar (last window): p50 {_ms(latency['p50']).strip()}, "
            f"p95 {_ms(latency['p95']).strip()}, p99 {_ms(latency['p99']).strip()}"
        )
    if result.interrupted:
        lines.append("  interrupted before the end")
    if result.leftovers:
        lines.append(f"  still running after clean-up: {', '.join(result.leftovers)}")
    else:
        lines.append(
            "  clean-up: the traffic, the sidecar and the model server stopped; their ports are closed"
        )
    if result.workdir_removed:
        lines.append("  validation data and reference profile removed with their temporary directory")
        lines.append("  (run with --workdir DIR to keep them)")
    elif result.workdir is not None:
        lines.append(f"  validation data and reference profile kept in {result.workdir}")
    return "\n".join(lines)
