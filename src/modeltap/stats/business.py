"""Business outcomes: conversions and order values fed back later, joined to the answered rows
that led to them, and what they say of each model version.

Every answered row with a join key (the request id and the row, or the `label_key` column) is an
*exposure*, kept briefly (bounded) under its key with its model version and time. An outcome
(`{"request_id": …, "row": 0, "name": "conversion", "value": 1}`) joins its exposure once per
name; the first value wins (`duplicate`, `conflict` otherwise, counted), and an outcome that
comes before its exposure waits, bounded, as labels do. Counts land in the slot of the exposure's
time, so a window's figures are those of its own exposures:

- `conversion_rate` = the mean of the 0/1 `conversion` outcomes: over the rows whose result is
  known, since outcomes come late (a row still waiting for its outcome is not a row that did not
  convert, so the result of every row is posted, 0 or 1);
- `average_order_value` = mean `order_value` over the order values joined;
- `revenue_per_prediction` = sum of order values / rows whose conversion is known;
- `outcomes_per_request` = outcomes joined / requests.

A version is judged against a baseline: the configured baseline version's cumulative counts, else
the model's first version seen, and for that version itself its own history before the window
(the reference period); a baseline needs `min_samples` values of the judged figure.
`revenue_impact` = (CR_v - CR_b) * N_v * AOV with N_v the version's exposures in the window and
AOV its average order value (the baseline's while it has none); the 95 % interval comes from the
delta method over the two rates and the AOV, taken as independent:
Var = (N·AOV)²·(s²_v/n_v + s²_b/n_b) + (N·Δ)²·s²_AOV/n_AOV.

Outcomes count in the window only while their exposure's slot is in it: results must come back
within the window (`window_slots` * `window_slot_s`) to be compared like with like, since the
baseline's totals hold every result, however late. Every snapshot tests the window again, so
`alpha` is per look, not per incident: `alert_for_s` (how long a level must hold) is what keeps
a chance dip from firing.

EMERGENCY, the business level, needs all of: at least `min_samples` window values of the judged
figure; the figure below its threshold (below `floor`, or more than `max_drop` below the baseline
relatively); and the drop significant, a one-sided Welch z-test of the window against the baseline
(against the floor when there is no baseline) with p < `alpha`. The figures are means of per-row
values with known counts, sums and sums of squares, which is also what makes them summable across
replicas.

Thread-safe: the monitor's worker adds exposures while outcome requests add outcomes.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from modeltap.config import BUSINESS_METRICS, CONVERSION
from modeltap.snapshot import BusinessSummary, OutcomeTally, RevenueImpact
from modeltap.stats.recent_names import RecentNames
from modeltap.stats.scores import Level
from modeltap.stats.slot_ring import SlotRing

ORDER_VALUE = "order_value"
Z_95 = 1.959963984540054


@dataclass
class _Counts:
    """Mutable counts of one slot (or the totals) of one model version."""

    requests: int = 0
    exposures: int = 0
    outcomes: int = 0
    sums: dict[str, list[float]] = field(default_factory=dict)  # name -> [count, sum, sum of squares]

    def add_outcome(self, name: str, value: float) -> None:
        self.outcomes += 1
        cell = self.sums.setdefault(name, [0.0, 0.0, 0.0])
        cell[0] += 1
        cell[1] += value
        cell[2] += value * value

    def merge(self, other: _Counts) -> None:
        self.requests += other.requests
        self.exposures += other.exposures
        self.outcomes += other.outcomes
        for name, (n, s, q) in other.sums.items():
            cell = self.sums.setdefault(name, [0.0, 0.0, 0.0])
            cell[0] += n
            cell[1] += s
            cell[2] += q

    def tally(self) -> OutcomeTally:
        return OutcomeTally(
            self.requests,
            self.exposures,
            self.outcomes,
            tuple((name, int(n), s, q) for name, (n, s, q) in sorted(self.sums.items())),
        )


@dataclass(slots=True)
class _Exposure:
    model: str
    version: str
    created_s: float
    # The outcomes joined so far, by name (kept with the exposure, so a repeat is a duplicate or
    # a conflict for exactly as long as the exposure itself is kept).
    joined: dict[str, float] | None = None


@dataclass(frozen=True)
class BusinessSettings:
    metric: str = "conversion_rate"
    floor: float | None = None  # the metric's absolute threshold
    max_drop: float = 0.10  # relative drop against the baseline that counts as a breach
    alpha: float = 0.01
    min_samples: int = 500
    baseline_version: str | None = None


@dataclass(frozen=True)
class Moments:
    """Count, mean and sample variance of per-row values (from a count, a sum and a sum of squares)."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, n: float, total: float, squares: float) -> Moments | None:
        if n <= 0:
            return None
        mean = total / n
        spread = (squares - total * mean) / (n - 1) if n > 1 else 0.0
        if not (math.isfinite(mean) and math.isfinite(spread)):
            return None  # values too large to square (the parser caps them; sums may still add up)
        return cls(int(n), mean, max(0.0, spread))


def moments(tally: OutcomeTally, metric: str) -> Moments | None:
    """The per-row values behind `metric` in `tally` (None where it has none). A rate is over
    the rows whose conversion is known (a `conversion` outcome posted, 1 or 0): rows still waiting
    for theirs are not counted as rows that did not convert."""
    known, converted, _ = tally.sum_of(CONVERSION)
    n, s, q = tally.sum_of(ORDER_VALUE)
    if metric == "conversion_rate":
        return Moments.of(*tally.sum_of(CONVERSION))
    if metric == "revenue_per_prediction":
        if converted and not n:
            return None  # conversions without their order values: no revenue to speak of
        return Moments.of(known, s, q)
    if metric == "average_order_value":
        return Moments.of(n, s, q)
    raise ValueError(f"unknown business metric {metric!r}")


def figures(tally: OutcomeTally) -> tuple[tuple[str, float | None], ...]:
    """The figures of `tally`."""
    out: list[tuple[str, float | None]] = []
    for metric in BUSINESS_METRICS:
        m = moments(tally, metric)
        out.append((metric, m.mean if m is not None else None))
    out.append(("outcomes_per_request", tally.outcomes / tally.requests if tally.requests else None))
    return tuple(out)


def lower_p_value(current: Moments, baseline: Moments) -> float:
    """One-sided Welch z-test p-value of `current`'s mean being below `baseline`'s."""
    se = math.sqrt(current.variance / current.n + baseline.variance / baseline.n)
    difference = current.mean - baseline.mean
    if se == 0.0:
        return 0.0 if difference < 0 else 1.0
    from scipy.stats import norm  # on first use, as in `scores`

    return float(norm.cdf(difference / se))


def below_floor_p_value(current: Moments, floor: float) -> float:
    """One-sided z-test p-value of `current`'s mean being below a fixed `floor`."""
    se = math.sqrt(current.variance / current.n)
    difference = current.mean - floor
    if se == 0.0:
        return 0.0 if difference < 0 else 1.0
    from scipy.stats import norm

    return float(norm.cdf(difference / se))


def revenue_impact(
    current: OutcomeTally, baseline: OutcomeTally, aov_of: OutcomeTally
) -> RevenueImpact | None:
    """`ΔConversion * Traffic * AOV` of `current` (the window) against `baseline`, the AOV taken
    from `aov_of`; None without known conversions on both sides or without any order value."""
    rate, base = moments(current, "conversion_rate"), moments(baseline, "conversion_rate")
    aov = moments(aov_of, "average_order_value")
    if rate is None or base is None or aov is None:
        return None
    traffic = current.exposures
    delta = rate.mean - base.mean
    value = delta * traffic * aov.mean
    scale, shift = traffic * aov.mean, traffic * delta
    variance = scale * scale * (rate.variance / rate.n + base.variance / base.n) + shift * shift * (
        aov.variance / aov.n
    )
    if not (math.isfinite(value) and math.isfinite(variance)):
        return None
    half = Z_95 * math.sqrt(variance)
    return RevenueImpact(value, value - half, value + half, traffic, delta, aov.mean)


def _minus(total: OutcomeTally, window: OutcomeTally) -> OutcomeTally:
    """The counts of `total` outside `window` (the history before it)."""
    names = {name for name, *_ in total.sums}
    sums = []
    for name in sorted(names):
        n, s, q = total.sum_of(name)
        wn, ws, wq = window.sum_of(name)
        sums.append((name, n - wn, s - ws, q - wq))
    return OutcomeTally(
        total.requests - window.requests,
        total.exposures - window.exposures,
        total.outcomes - window.outcomes,
        tuple(sums),
    )


class _Version:
    def __init__(self, slots: int, slot_s: float, first_s: float) -> None:
        self.ring: SlotRing[_Counts] = SlotRing(_Counts, slots, slot_s)
        self.total = _Counts()
        self.first_s = first_s
        self.last_s = first_s


class BusinessOutcomes:
    """Exposures and outcomes of every model version. See the module notes.

    Example::

        business = BusinessOutcomes(slots=10, slot_s=60.0)
        business.add_exposures("churn", "2", [("id", "r1", "0")], now)
        business.add_outcome("churn", ("id", "r1", "0"), "conversion", 1.0, now)
        business.views(now)
    """

    def __init__(
        self,
        *,
        slots: int,
        slot_s: float,
        settings: BusinessSettings | None = None,
        max_exposures: int = 250_000,
        ttl_s: float = 24 * 3600.0,
        early_ttl_s: float = 60.0,
        max_early: int = 10_000,
        max_versions: int = 64,
        default_model: str | None = None,
    ) -> None:
        self.slots = slots
        self.slot_s = slot_s
        self.settings = settings or BusinessSettings()
        self.max_exposures = max_exposures
        self.ttl_s = ttl_s
        self.early_ttl_s = early_ttl_s
        self.max_early = max_early
        self.max_versions = max_versions
        self.default_model = default_model
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._exposures: OrderedDict[tuple[str, Hashable], _Exposure] = OrderedDict()
        # Outcomes waiting for their exposure: (model, key) -> name -> (value, arrival).
        self._early: OrderedDict[tuple[str, Hashable], dict[str, tuple[float, float]]] = OrderedDict()
        self._versions: dict[tuple[str, str], _Version] = {}
        self._models = RecentNames(ttl_s)  # unnamed outcomes go to the only one

    def add_exposures(
        self, model: str, version: str, keys: Sequence[Hashable | None], now: float, weight: int = 1
    ) -> None:
        """One exchange's answered rows: `keys[i]` joins row i's outcomes (None: it cannot).
        `weight`: the exchanges it stands for when payloads are sampled (the traffic counts them
        all; only the decoded ones can be joined)."""
        with self._lock:
            self._models.add(model, now)
            counts = self._counts(model, version, now)
            if counts is None:
                return
            joinable = [key for key in keys if key is not None]
            if len(joinable) < len(keys):
                self.counts["no_join_key"] += len(keys) - len(joinable)
            if not joinable:
                return
            current, total = counts
            current.requests += weight
            total.requests += weight
            current.exposures += len(joinable) * weight
            total.exposures += len(joinable) * weight
            self._expire(now)
            for key in joinable:
                exposure = _Exposure(model, version, now)
                self._exposures[(model, key)] = exposure
                self._exposures.move_to_end((model, key))
                waiting = self._early.pop((model, key), None) if self._early else None
                for name, (value, _) in (waiting or {}).items():
                    self._join(exposure, key, name, value, now)
            while len(self._exposures) > self.max_exposures:
                self._exposures.popitem(last=False)
                self.counts["evicted"] += 1

    def add_outcome(self, model: str | None, key: Hashable, name: str, value: float, now: float) -> str:
        """Join one outcome: `joined`, `waiting` (its exposure has not come yet), `duplicate`,
        `conflict` or `unknown_model`, counted."""
        with self._lock:
            model = model if model is not None else self._only_model(now)
            if model is None:
                self.counts["unknown_model"] += 1
                return "unknown_model"
            self._expire(now)
            exposure = self._exposures.get((model, key))
            waiting = self._early.get((model, key))
            done = exposure.joined.get(name) if exposure is not None and exposure.joined else None
            if done is None and waiting is not None and name in waiting:
                done = waiting[name][0]
            if done is not None:
                outcome = "duplicate" if done == value else "conflict"
                self.counts[outcome] += 1
                return outcome
            if exposure is None:
                if waiting is None:
                    waiting = self._early[(model, key)] = {}
                waiting[name] = (value, now)
                self.counts["early"] += 1
                while len(self._early) > self.max_early:
                    _, dropped = self._early.popitem(last=False)
                    self.counts["unmatched"] += len(dropped)
                return "waiting"
            self._join(exposure, key, name, value, now)
            return "joined"

    def _join(self, exposure: _Exposure, key: Hashable, name: str, value: float, now: float) -> None:
        if exposure.joined is None:
            exposure.joined = {}
        exposure.joined[name] = value
        self.counts["joined"] += 1
        version = self._versions.get((exposure.model, exposure.version))
        if version is None:
            return
        version.total.add_outcome(name, value)
        slot = version.ring.at(exposure.created_s, now)
        if slot is not None:  # an exposure older than the window counts in the totals only
            slot.add_outcome(name, value)

    def _counts(self, model: str, version: str, now: float) -> tuple[_Counts, _Counts] | None:
        entry = self._versions.get((model, version))
        if entry is None:
            if len(self._versions) >= self.max_versions and not self._retire_one(now):
                self.counts["over_version_cap"] += 1
                return None
            entry = self._versions[(model, version)] = _Version(self.slots, self.slot_s, now)
        entry.last_s = now
        return entry.ring.current(now), entry.total

    def _retire_one(self, now: float) -> bool:
        """Make room for a new version: forget the one answered longest ago, if that was more than
        two windows ago and it is not the configured baseline (a sidecar outliving many deploys
        keeps watching new ones)."""
        idle_s = 2 * self.slots * self.slot_s
        candidates = [
            (entry.last_s, identity)
            for identity, entry in self._versions.items()
            if now - entry.last_s > idle_s and identity[1] != self.settings.baseline_version
        ]
        if not candidates:
            return False
        del self._versions[min(candidates)[1]]
        self.counts["versions_retired"] += 1
        return True

    def _only_model(self, now: float) -> str | None:
        if self.default_model is not None:
            return self.default_model
        return self._models.only(now)

    def _expire(self, now: float) -> None:
        while self._exposures:
            exposure = next(iter(self._exposures.values()))
            if now - exposure.created_s < self.ttl_s:
                break
            self._exposures.popitem(last=False)
            self.counts["expired"] += 1
        while self._early:
            waiting = next(iter(self._early.values()))
            if now - min(at for _, at in waiting.values()) < self.early_ttl_s:
                break
            self._early.popitem(last=False)
            self.counts["unmatched"] += len(waiting)

    def counts_rejected(self, count: int) -> None:
        if count:
            with self._lock:
                self.counts["rejected"] += count

    def outcome_counts(self) -> dict[str, int]:
        """What became of every outcome (joined, duplicate, conflict, early, unmatched,
        rejected), and the exposures that could not be joined (no_join_key) or were let go
        (expired, evicted)."""
        with self._lock:
            return dict(self.counts)

    def views(self, now: float) -> tuple[BusinessSummary, ...]:
        with self._lock:
            self._expire(now)
            tallies = {
                identity: (entry.ring.window(now, _Counts.merge).tally(), entry.total.tally(), entry.first_s)
                for identity, entry in self._versions.items()
            }
        return tuple(self._view(model, version, tallies) for (model, version) in sorted(tallies))

    def _baseline_version(
        self, model: str, tallies: dict[tuple[str, str], tuple[OutcomeTally, OutcomeTally, float]]
    ) -> str | None:
        configured = self.settings.baseline_version
        if configured is not None:
            return configured if (model, configured) in tallies else None
        versions = [(first, version) for (m, version), (_, _, first) in tallies.items() if m == model]
        return min(versions)[1] if versions else None

    def _view(
        self,
        model: str,
        version: str,
        tallies: dict[tuple[str, str], tuple[OutcomeTally, OutcomeTally, float]],
    ) -> BusinessSummary:
        window, total, _ = tallies[(model, version)]
        baseline_version = self._baseline_version(model, tallies)
        if baseline_version is not None and baseline_version != version:
            source, baseline = "version", tallies[(model, baseline_version)][1]
        else:
            source, baseline = "history", _minus(total, window)
            baseline_version = version
        judged = moments(baseline, self.settings.metric)
        if judged is None or judged.n < self.settings.min_samples:
            # A baseline of a handful of rows would make any window look significant.
            source, baseline = "none", OutcomeTally()
            baseline_version = None
        window_figures = figures(window)
        baseline_figures = figures(baseline) if source != "none" else ()
        aov_of = (
            window if window.sum_of(ORDER_VALUE)[0] else total if total.sum_of(ORDER_VALUE)[0] else baseline
        )
        impact = revenue_impact(window, baseline, aov_of) if source != "none" else None
        threshold, p_value, level = self._judge(window, baseline, source)
        return BusinessSummary(
            model,
            version,
            window,
            total,
            window_figures=window_figures,
            total_figures=figures(total),
            baseline_source=source,
            baseline_version=baseline_version,
            baseline_figures=baseline_figures,
            revenue_impact=impact,
            metric=self.settings.metric,
            threshold=threshold,
            p_value=p_value,
            level=int(level),
        )

    def _judge(
        self,
        window: OutcomeTally,
        baseline: OutcomeTally,
        source: str,
    ) -> tuple[float | None, float | None, Level]:
        """(threshold, p-value, level) of the judged figure in the window."""
        settings = self.settings
        metric = settings.metric
        current = moments(window, metric)
        base = moments(baseline, metric) if source != "none" else None
        # The configured floor, else the baseline less the drop that matters.
        threshold = (
            settings.floor
            if settings.floor is not None
            else base.mean * (1.0 - settings.max_drop)
            if base is not None
            else None
        )
        if current is None or threshold is None:
            return threshold, None, Level.OK
        p_value = (
            lower_p_value(current, base)
            if base is not None
            else below_floor_p_value(current, settings.floor)
            if settings.floor is not None
            else None
        )
        breached = current.mean < threshold
        significant = p_value is not None and p_value < settings.alpha
        enough = current.n >= settings.min_samples
        return threshold, p_value, Level.EMERGENCY if breached and significant and enough else Level.OK
