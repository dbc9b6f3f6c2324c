"""Drift state of one model version: binned counts for every feature the reference describes,
and the window scores and alert levels computed from them at snapshot time (STATS.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modeltap._types import Value
from modeltap.reference.document import ReferenceFeature, ReferenceProfile, canonical_category
from modeltap.stats.categorical_bank import CategoricalBank
from modeltap.stats.numeric_bank import NumericBank
from modeltap.stats.scores import (
    Level,
    Thresholds,
    chi2_homogeneity,
    coarse_counts,
    feature_level,
    js_distance,
    ks_binned,
    missing_rate_test,
    psi,
    psi_noise_floor,
)
from modeltap.stats.window import WindowRing

# Scores are recomputed at most this often, or once a window slot where slots are shorter (a
# window of a few seconds would otherwise move by more than its length between two scores), but
# not more than once a second: they cost about 0.5 ms a feature. Snapshots in between reuse them.
SCORE_INTERVAL_S = 5.0
MIN_SCORE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class WindowConfig:
    slots: int = 15
    slot_s: float = 60.0


@dataclass(frozen=True)
class FeatureScores:
    """One feature's window numbers (None where a score cannot be computed)."""

    window_count: int
    window_missing: int
    window_out_of_range: int
    psi: float | None
    js: float | None
    ks_statistic: float | None
    ks_pvalue: float | None
    chi2_pvalue: float | None
    level: Level
    missing_shift: float | None  # window missing rate minus the reference's
    missing_pvalue: float | None  # two-proportion z-test of that shift
    cumulative: tuple[int, ...]
    window: tuple[int, ...]
    reference: tuple[int, ...]
    bounds: tuple[float, ...] = ()  # numeric: the fine edges the counts are over
    categories: tuple[str, ...] = ()  # categorical: vocabulary, __other__, __missing__
    # PSI's noise floor tau for this window: the levels compare PSI with max(threshold, tau).
    psi_noise_floor: float | None = None


class DriftState:
    """Numeric banks (one per role) and categorical banks for the reference's features.

    Example::

        state = DriftState(profile, WindowConfig(), Thresholds())
        state.add_matrix("input", ("age", "income"), matrix, weight=1, now=time.monotonic())
        scores = state.scores(now=time.monotonic())   # {(role, name): FeatureScores}
    """

    def __init__(self, profile: ReferenceProfile, window: WindowConfig, thresholds: Thresholds) -> None:
        self.profile = profile
        self.thresholds = thresholds
        self.window_s = window.slots * window.slot_s
        self.score_interval_s = min(SCORE_INTERVAL_S, max(window.slot_s, MIN_SCORE_INTERVAL_S))
        self.numeric: dict[str, NumericBank] = {}
        self.numeric_columns: dict[str, dict[str, int]] = {}
        self.categorical: dict[tuple[str, str], CategoricalBank] = {}
        self.features: dict[tuple[str, str], ReferenceFeature] = {}
        for role in ("input", "output", "label"):
            numeric = [
                f for f in profile.features if f.role == role and f.kind == "numeric" and f.has_distribution
            ]
            if numeric:
                self.numeric[role] = NumericBank(
                    [f.name for f in numeric], [f.fine_edges for f in numeric], window.slots, window.slot_s
                )
                self.numeric_columns[role] = {f.name: j for j, f in enumerate(numeric)}
        for feature in profile.features:
            if feature.kind == "categorical" and feature.has_distribution:
                bank = CategoricalBank(feature.vocabulary, window.slots, window.slot_s)
                self.categorical[(feature.role, feature.name)] = bank
            if feature.has_distribution:
                self.features[(feature.role, feature.name)] = feature
        # Per role: [weighted rows, decoded rows] per slot. Under payload sampling every decoded
        # row counts `weight` times (unbiased shares), but the tests must see the real sample size.
        self._samples = {
            role: WindowRing(window.slots, window.slot_s, 2) for role in ("input", "output", "label")
        }
        self._cached: dict[tuple[str, str], FeatureScores] | None = None
        self._cached_at = 0.0
        self._psi_maps = {
            key: np.asarray(f.psi_index, dtype=np.int64)
            for key, f in self.features.items()
            if f.kind == "numeric"
        }

    def tracks(self, role: str, name: str) -> bool:
        """Whether the reference describes this feature (its distribution is monitored)."""
        return (role, name) in self.features

    def add_matrix(
        self, role: str, names: Sequence[str], matrix: np.ndarray, weight: int, now: float
    ) -> set[str]:
        """Add the columns of `matrix` this state tracks; returns the names it consumed."""
        self._samples[role].add(np.array([matrix.shape[0] * weight, matrix.shape[0]]), now)
        consumed: set[str] = set()
        columns = self.numeric_columns.get(role)
        if columns is not None:
            bank = self.numeric[role]
            positions = [names.index(name) if name in names else -1 for name in bank.names]
            if any(p >= 0 for p in positions):
                ordered = np.full((matrix.shape[0], len(bank.names)), np.nan)
                for j, p in enumerate(positions):
                    if p >= 0:
                        ordered[:, j] = matrix[:, p]
                        consumed.add(bank.names[j])
                bank.add(ordered, weight, now)
        for name in names:
            categorical = self.categorical.get((role, name))
            if categorical is not None:
                column = matrix[:, list(names).index(name)]
                categorical.add([canonical_category(float(v)) for v in column], weight, now)
                consumed.add(name)
        return consumed

    def add_columns(self, role: str, columns: Mapping[str, list[Value]], weight: int, now: float) -> set[str]:
        """Add the general-path columns this state tracks; returns the names it consumed."""
        consumed: set[str] = set()
        rows = len(next(iter(columns.values()))) if columns else 0
        categorical_only = not any(n in self.numeric_columns.get(role, {}) for n in columns)
        if categorical_only and rows:  # add_matrix counts the numeric case
            self._samples[role].add(np.array([rows * weight, rows]), now)
        numeric_names = [
            n for n in columns if (role, n) in self.features and n in self.numeric_columns.get(role, {})
        ]
        if numeric_names:
            rows = len(columns[numeric_names[0]])
            matrix = np.full((rows, len(numeric_names)), np.nan)
            for j, name in enumerate(numeric_names):
                for i, value in enumerate(columns[name]):
                    if isinstance(value, float):
                        matrix[i, j] = value
            consumed |= self.add_matrix(role, numeric_names, matrix, weight, now)
        for name, values in columns.items():
            categorical = self.categorical.get((role, name))
            if categorical is not None:
                categorical.add([canonical_category(v) for v in values], weight, now)
                consumed.add(name)
        return consumed

    def scores(self, now: float) -> dict[tuple[str, str], FeatureScores]:
        """Window scores, recomputed at most every `score_interval_s` (tests cost milliseconds)."""
        if self._cached is not None and now - self._cached_at < self.score_interval_s:
            return self._cached
        self._cached = self._compute(now)
        self._cached_at = now
        return self._cached

    def invalidate(self) -> None:
        """Forget cached scores (a flush wants current numbers)."""
        self._cached = None

    def _sample_fraction(self, role: str, now: float) -> float:
        weighted, decoded = self._samples[role].window(now)
        return float(decoded / weighted) if weighted > 0 else 1.0

    def _compute(self, now: float) -> dict[tuple[str, str], FeatureScores]:
        windows = {role: bank.window(now) for role, bank in self.numeric.items()}
        fractions = {role: self._sample_fraction(role, now) for role in self._samples}
        monitored = len(self.features)
        result: dict[tuple[str, str], FeatureScores] = {}
        for (role, name), feature in self.features.items():
            if feature.kind == "numeric":
                bank = self.numeric[role]
                j = self.numeric_columns[role][name]
                fine, missing = bank.feature_counts(j, windows[role])
                cumulative, _ = bank.feature_counts(j, bank.cumulative)
                result[(role, name)] = self._numeric_scores(
                    feature, fine, missing, cumulative, monitored, fractions[role]
                )
            else:
                categorical = self.categorical[(role, name)]
                result[(role, name)] = self._categorical_scores(
                    feature, categorical.window(now), categorical.cumulative, monitored, fractions[role]
                )
        return result

    def _numeric_scores(
        self,
        feature: ReferenceFeature,
        fine: np.ndarray,
        missing: int,
        cumulative: np.ndarray,
        monitored: int,
        fraction: float = 1.0,
    ) -> FeatureScores:
        reference = np.asarray(feature.counts, dtype=np.int64)
        n_window = int(fine.sum())
        n_decoded = round(n_window * fraction)  # the real sample size behind weighted counts
        psi_map = self._psi_maps[(feature.role, feature.name)]
        coarse_ref = coarse_counts(reference, psi_map)
        coarse_cur = coarse_counts(fine, psi_map)
        psi_value = psi(coarse_ref, coarse_cur)
        ks = ks_binned(reference, fine * fraction if fraction < 1.0 else fine)
        tau = psi_noise_floor(len(coarse_ref), int(reference.sum()), n_decoded, self.thresholds.alpha)
        level = feature_level(psi_value, ks[1] if ks else None, n_decoded, tau, monitored, self.thresholds)
        # On the decoded values behind the weighted counts, as the other tests (sampled payloads).
        missing_test = missing_rate_test(
            feature.missing or 0,
            (feature.n or 0) + (feature.missing or 0),
            round(missing * fraction),
            round((n_window + missing) * fraction),
        )
        return FeatureScores(
            window_count=n_window,
            window_missing=missing,
            window_out_of_range=int(fine[0] + fine[-1]) if len(fine) else 0,
            psi=psi_value,
            js=js_distance(coarse_ref, coarse_cur),
            ks_statistic=ks[0] if ks else None,
            ks_pvalue=ks[1] if ks else None,
            chi2_pvalue=None,
            level=level,
            missing_shift=missing_test[0] if missing_test else None,
            missing_pvalue=missing_test[1] if missing_test else None,
            cumulative=tuple(int(c) for c in cumulative),
            window=tuple(int(c) for c in fine),
            reference=tuple(int(c) for c in reference),
            bounds=feature.fine_edges,
            psi_noise_floor=tau if math.isfinite(tau) else None,
        )

    def _categorical_scores(
        self,
        feature: ReferenceFeature,
        window: np.ndarray,
        cumulative: np.ndarray,
        monitored: int,
        fraction: float = 1.0,
    ) -> FeatureScores:
        # Reference vector: vocabulary counts, __other__, then __missing__ (the same layout as the bank).
        reference = np.asarray((*feature.counts, feature.missing or 0), dtype=np.int64)
        psi_value = psi(reference, window)
        chi2 = chi2_homogeneity(reference, window * fraction if fraction < 1.0 else window)
        n_window = int(window[:-1].sum())
        n_decoded = round(n_window * fraction)
        total_decoded = round(int(window.sum()) * fraction)
        tau = psi_noise_floor(len(reference), int(reference.sum()), total_decoded, self.thresholds.alpha)
        level = feature_level(
            psi_value, chi2[1] if chi2 else None, n_decoded, tau, monitored, self.thresholds
        )
        missing_test = missing_rate_test(
            feature.missing or 0,
            (feature.n or 0) + (feature.missing or 0),
            round(int(window[-1]) * fraction),
            total_decoded,
        )
        return FeatureScores(
            window_count=n_window,
            window_missing=int(window[-1]),
            window_out_of_range=int(window[-2]),
            psi=psi_value,
            js=js_distance(reference, window),
            ks_statistic=None,
            ks_pvalue=None,
            chi2_pvalue=chi2[1] if chi2 else None,
            level=level,
            missing_shift=missing_test[0] if missing_test else None,
            missing_pvalue=missing_test[1] if missing_test else None,
            cumulative=tuple(int(c) for c in cumulative),
            window=tuple(int(c) for c in window),
            reference=tuple(int(c) for c in reference),
            categories=(*feature.vocabulary, "__other__", "__missing__"),
            psi_noise_floor=tau if math.isfinite(tau) else None,
        )
