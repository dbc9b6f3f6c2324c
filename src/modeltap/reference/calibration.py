"""Histogram-binning calibration of a binary classifier's scores, fitted on labelled reference
rows (`modeltap profile --target --score`): equal-frequency bins of the score, each bin's observed
positive rate. Used to estimate performance before labels arrive (`modeltap.stats.cbpe`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CALIBRATION_BINS = 20


@dataclass(frozen=True)
class Calibration:
    """Histogram-binning calibration: `edges` (inner bin bounds of the score) and each bin's
    observed positive rate on the reference."""

    edges: tuple[float, ...]
    rates: tuple[float, ...]

    def apply(self, scores: np.ndarray) -> np.ndarray:
        index = np.searchsorted(np.asarray(self.edges), np.asarray(scores, dtype=np.float64), side="right")
        return np.asarray(self.rates)[index]


def fit_calibration(scores: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> Calibration:
    """Equal-frequency bins of the reference scores and their positive rates.

    Raises ValueError without at least one score per bin or with labels other than 0/1."""
    p = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1 or not np.isfinite(p).all():
        raise ValueError("scores and labels must be 1-D, of one length, finite")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if p.size < bins:
        raise ValueError(f"calibration needs at least {bins} labelled scores, got {p.size}")
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)[1:-1]))
    index = np.searchsorted(edges, p, side="right")
    counts = np.bincount(index, minlength=len(edges) + 1)
    positives = np.bincount(index, weights=y.astype(np.float64), minlength=len(edges) + 1)
    rates = np.divide(positives, counts, out=np.full(len(counts), np.nan), where=counts > 0)
    # An empty bin (possible only with tied edges) takes its neighbours' average rate.
    if np.isnan(rates).any():
        filled = np.interp(np.arange(len(rates)), np.flatnonzero(~np.isnan(rates)), rates[~np.isnan(rates)])
        rates = filled
    return Calibration(tuple(float(e) for e in edges), tuple(float(r) for r in rates))
