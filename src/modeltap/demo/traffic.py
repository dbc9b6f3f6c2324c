"""The demo's client: phases of in-distribution and drifted traffic, with malformed requests
spread through all of them.

- **baseline**: customers drawn like the training data.
- **covariate shift**: the same customers, but `monthly_charges` up by 1 standard deviation (a price
  rise) and `support_calls` up by 1.5 (an outage); the other features are untouched. Exactly the
  shifted features must be flagged; the prediction moves too, since it depends on them.
- **recovery**: like the baseline again; once the window has turned over, nothing is flagged.
- **concept drift**: the customers are drawn exactly as in training, but who churns changed: for
  customers paying over 90 a month (about 16 %) the outcome is the opposite of what it used to be.
  The inputs, the prediction and the estimate from the scores cannot see it; only the labels can.
- **prior shift**: the class balance changes, not the customers: rows are drawn conditioned on the
  label so that the share of churners rises from the training set's ~40 % to 80 %. Every feature
  that carries class information moves with it; the check is the prediction's drift.
- **new version**: version 2 goes live for every customer. Customers, inputs and decisions are as
  before, but its retention offers are accepted less often (5 % instead of 12 %): only the
  business outcomes can see it, an EMERGENCY.

Each answered row is a customer shown a retention offer; whether they accepted it (a conversion,
with a year of their monthly charges as its order value) is posted to the sidecar's `/outcome`
after the phase, as a billing system would report it.

Every request carries an `x-request-id`; the real outcome of every answered row is fed back to the
sidecar's `/feedback` after the phase's traffic (labels arrive later than predictions), so each
phase is judged twice: before its labels (drift, and the performance estimated from the scores)
and after (the realised performance).

One request in `MALFORMED_EVERY` is malformed, cycling through four kinds the model answers 400
(or, for a NaN token, 200): each must be counted as a data-quality violation of its reason.
"""

from __future__ import annotations

import http.client
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import orjson

from modeltap.demo.model_server import (
    FEATURES,
    MODEL_VERSION,
    NEW_VERSION,
    PREDICT_PATH,
    ROUTE_HEADER,
    churn_labels,
    make_customers,
)

ROWS_PER_REQUEST = 8
MALFORMED_EVERY = 20
POOL_ROWS = 50_000
# The share of customers shown an offer who accept it, per model version, and the order value of
# an acceptance: a year of the customer's monthly charges.
CONVERSION_RATES = {MODEL_VERSION: 0.12, NEW_VERSION: 0.05}
ORDER_MONTHS = 12
LABELS_PER_POST = 1000  # well under the feedback endpoint's 1 MiB body limit

# (violation reason modeltap counts it under, body)
MALFORMED: tuple[tuple[str, bytes], ...] = (
    ("decode_error", b'{"instances": [[12.0, 70.5, 1, 45.0'),  # truncated JSON
    ("type", b'{"instances": [[12.0, "n/a", 1, 45.0, 5.0]]}'),  # text where a number belongs
    ("schema", b'{"instances": [[12.0, 70.5, 1, 45.0]]}'),  # a row one feature short
    ("missing", b'{"instances": [[12.0, NaN, 1, 45.0, 5.0]]}'),  # a NaN token: a missing value
)


@dataclass(frozen=True)
class Phase:
    name: str
    share: float  # of the run's duration
    shift: dict[str, float] = field(default_factory=dict)  # feature -> mean shift in std units
    churn_share: float | None = None  # sample conditioned on the label to this share of churners
    # Concept drift: the outcome flips for customers whose feature is above this value.
    concept: tuple[str, float] | None = None
    version: str = MODEL_VERSION  # the version the traffic is routed to
    note: str = ""

    @property
    def expects_business_drop(self) -> bool:
        """A new version that converts worse: only the business outcomes may show it."""
        return CONVERSION_RATES[self.version] < CONVERSION_RATES[MODEL_VERSION]

    @property
    def expected_inputs(self) -> frozenset[str]:
        """The input features this phase must flag (a prior shift is judged by the prediction)."""
        return frozenset(self.shift)

    @property
    def expects_prediction_drift(self) -> bool:
        return self.churn_share is not None

    @property
    def expects_performance_drop(self) -> bool:
        """Concept drift: only the realised performance may show it."""
        return self.concept is not None

    @property
    def judged_by_inputs(self) -> bool:
        """A prior shift legitimately moves every class-informative feature: only its prediction
        drift is judged (CLARIFICATIONS.md, issue 6)."""
        return self.churn_share is None


PHASES = (
    Phase("baseline", 1 / 5, note="customers like the training data"),
    Phase(
        "covariate shift",
        1 / 5,
        shift={"monthly_charges": 1.0, "support_calls": 1.5},
        note="price rise (+1 sd monthly_charges) and an outage (+1.5 sd support_calls)",
    ),
    Phase("recovery", 1 / 5, note="customers like the training data again: the window forgets"),
    Phase(
        "concept drift",
        1 / 5,
        concept=("monthly_charges", 90.0),
        note="customers like the training data, but a rival's offer reverses who leaves among "
        "those paying over 90 a month",
    ),
    Phase("prior shift", 1 / 5, churn_share=0.8, note="the share of churners doubles, to 80 %"),
    Phase(
        "new version",
        1 / 5,
        version=NEW_VERSION,
        note="version 2 goes live: customers and decisions as before, but its offers convert at "
        "5 % instead of 12 %",
    ),
)


@dataclass
class PhaseTraffic:
    """What was sent in one phase, as the client saw it."""

    sent: int = 0
    failed: int = 0
    rows: int = 0
    churners: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    prediction_sum: float = 0.0  # of the churn probabilities answered
    predictions: int = 0
    labels_sent: int = 0
    labels_accepted: int = 0
    labels_rejected: int = 0
    conversions: int = 0  # offers accepted, among `rows`
    outcomes_sent: int = 0
    outcomes_accepted: int = 0

    @property
    def conversion_rate(self) -> float | None:
        return self.conversions / self.rows if self.rows else None

    @property
    def churn_share(self) -> float | None:
        return self.churners / self.rows if self.rows else None

    @property
    def mean_prediction(self) -> float | None:
        return self.prediction_sum / self.predictions if self.predictions else None


@dataclass
class TrafficStats:
    phase: str = ""
    by_phase: dict[str, PhaseTraffic] = field(default_factory=dict)

    def total(self, attribute: str) -> int:
        return sum(int(getattr(p, attribute)) for p in self.by_phase.values())

    def malformed(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for phase in self.by_phase.values():
            for reason, count in phase.malformed.items():
                out[reason] = out.get(reason, 0) + count
        return out


class CustomerSource:
    """Rows for one phase: fresh draws from the phase's population (a large pre-drawn pool)."""

    def __init__(self, phase: Phase, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        x = make_customers(POOL_ROWS, seed, shift=phase.shift)
        y = churn_labels(x, seed)  # the same P(churn | customer) as in training...
        if phase.concept is not None:  # ...except where the concept changed
            feature, above = phase.concept
            flipped = x[:, FEATURES.index(feature)] > above
            y = np.where(flipped, 1.0 - y, y)
        self._x, self._y = x, y
        self._share = phase.churn_share
        self._churners = np.flatnonzero(y == 1.0)
        self._stayers = np.flatnonzero(y == 0.0)

    def draw(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """`rows` customers and whether each churns (1.0) or stays (0.0)."""
        if self._share is None:
            index = self._rng.integers(0, len(self._x), rows)
        else:
            churn = self._rng.random(rows) < self._share
            index = np.where(
                churn,
                self._churners[self._rng.integers(0, len(self._churners), rows)],
                self._stayers[self._rng.integers(0, len(self._stayers), rows)],
            )
        return self._x[index], self._y[index]


class TrafficGenerator:
    """Sends one phase at a time at a steady rate over one keep-alive connection, then feeds the
    phase's real outcomes back to the sidecar's admin port (`/feedback`)."""

    def __init__(
        self,
        port: int,
        rate_per_s: float,
        stats: TrafficStats,
        seed: int = 100,
        admin_port: int | None = None,
    ) -> None:
        self._port = port
        self._admin_port = admin_port
        self._rate = rate_per_s
        self._stats = stats
        self._seed = seed
        self._connection = self._connect()
        self._requests = 0
        # The outcomes of the phase's answered rows, keyed by the request id the client sent:
        # whether each customer churned (labels), and the offers accepted (business outcomes).
        self._labels: list[dict[str, object]] = []
        self._outcomes: list[dict[str, object]] = []
        self._offers = np.random.default_rng(seed + 7)

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self._port, timeout=5)

    def run_phase(self, phase: Phase, duration_s: float, stop: threading.Event) -> None:
        stats = self._stats.by_phase.setdefault(phase.name, PhaseTraffic())
        self._stats.phase = phase.name
        source = CustomerSource(phase, self._seed)
        self._seed += 1
        interval = 1.0 / self._rate
        started = time.monotonic()
        end = started + duration_s
        k = 0
        while not stop.is_set():
            due = started + k * interval  # a fixed schedule: no drift from per-request delays
            now = time.monotonic()
            if due >= end or now >= end:
                break
            if due > now and stop.wait(due - now):
                break
            k += 1
            self._requests += 1
            request_id = f"demo-{self._requests}"
            headers = {
                "content-type": "application/json",
                "x-request-id": request_id,
                ROUTE_HEADER: phase.version,
            }
            rows = np.empty((0, len(FEATURES)))
            malformed: str | None = None
            outcomes = np.empty(0)
            if self._requests % MALFORMED_EVERY == 0:
                malformed, body = MALFORMED[(self._requests // MALFORMED_EVERY) % len(MALFORMED)]
            else:
                rows, outcomes = source.draw(ROWS_PER_REQUEST)
                body = orjson.dumps({"instances": np.round(rows, 3).tolist()})
            try:
                self._connection.request("POST", PREDICT_PATH, body=body, headers=headers)
                response = self._connection.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException):
                stats.failed += 1
                self._connection.close()
                self._connection = self._connect()
                continue
            stats.sent += 1
            stats.statuses[response.status] = stats.statuses.get(response.status, 0) + 1
            if malformed is not None:
                stats.malformed[malformed] = stats.malformed.get(malformed, 0) + 1
            elif response.status == 200:
                stats.rows += ROWS_PER_REQUEST
                stats.churners += int(outcomes.sum())
                scores = orjson.loads(payload).get("scores", [])
                stats.prediction_sum += math.fsum(float(p) for p in scores)
                stats.predictions += len(scores)
                self._labels.extend(
                    {"request_id": request_id, "row": row, "label": int(outcome)}
                    for row, outcome in enumerate(outcomes.tolist())
                )
                # Every row's result is reported (1 or 0), and an accepted offer's value.
                accepted = self._offers.random(len(rows)) < CONVERSION_RATES[phase.version]
                charges = rows[:, FEATURES.index("monthly_charges")]
                for row, converted in enumerate(accepted.tolist()):
                    item = {"request_id": request_id, "row": row}
                    self._outcomes.append({**item, "name": "conversion", "value": int(converted)})
                    if converted:
                        stats.conversions += 1
                        value = round(float(charges[row]) * ORDER_MONTHS, 2)
                        self._outcomes.append({**item, "name": "order_value", "value": value})

    def feed_labels(self, phase: Phase) -> None:
        """Send the phase's outcomes to the sidecar's `/feedback` (whether each customer churned,
        as a labelling job would later) and `/outcome` (the offers accepted, as billing would)."""
        stats = self._stats.by_phase.setdefault(phase.name, PhaseTraffic())
        labels, self._labels = self._labels, []
        outcomes, self._outcomes = self._outcomes, []
        sent, accepted = self._post("/feedback", labels)
        stats.labels_sent += sent
        stats.labels_accepted += accepted
        stats.labels_rejected += sent - accepted
        sent, accepted = self._post("/outcome", outcomes)
        stats.outcomes_sent += sent
        stats.outcomes_accepted += accepted

    def _post(self, path: str, items: list[dict[str, object]]) -> tuple[int, int]:
        """(items sent, items accepted) of `items` posted to the admin port in chunks."""
        if self._admin_port is None or not items:
            return 0, 0
        sent = accepted = 0
        connection = http.client.HTTPConnection("127.0.0.1", self._admin_port, timeout=10)
        try:
            for start in range(0, len(items), LABELS_PER_POST):
                chunk = items[start : start + LABELS_PER_POST]
                sent += len(chunk)
                try:
                    connection.request(
                        "POST", path, body=orjson.dumps(chunk), headers={"content-type": "application/json"}
                    )
                    response = connection.getresponse()
                    answer = orjson.loads(response.read()) if response.status == 200 else {}
                except (OSError, http.client.HTTPException, orjson.JSONDecodeError):
                    connection.close()
                    answer = {}
                accepted += int(answer.get("accepted", 0)) + int(answer.get("duplicates", 0))
        finally:
            connection.close()
        return sent, accepted

    def close(self) -> None:
        self._connection.close()


def describe(phase: Phase) -> str:
    if phase.shift:
        return ", ".join(f"{name} {sigma:+g} sd" for name, sigma in phase.shift.items())
    if phase.churn_share is not None:
        return f"churn share -> {phase.churn_share:.0%}"
    if phase.concept is not None:
        feature, above = phase.concept
        return f"inputs as in training, outcome flipped where {feature} > {above:g}"
    if phase.version != MODEL_VERSION:
        return f"as in training, answered by version {phase.version}"
    return "as in training"
