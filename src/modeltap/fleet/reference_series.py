"""A reference profile as the constants the fleet rules join against.

For every monitored feature the rules need the reference share of each PSI bucket, the bucket's
upper bound as Prometheus spells it (`le`) and the bound below it (`prev_le`: PromQL cannot find
"the previous bucket" of a cumulative histogram by itself), or the category; and per feature the
noise-floor factor `chi2.ppf(1 - alpha, B - 1)` and the reference size M, from which the rules
compute `tau = factor * (1/M + 1/N)` once the window size N is known (STATS.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from modeltap.export.prometheus_text import format_le
from modeltap.reference.document import ReferenceFeature, ReferenceProfile
from modeltap.stats.scores import coarse_counts


@dataclass(frozen=True)
class ReferenceBin:
    """One PSI bucket: numeric (`le`, `prev_le`; the lowest has no `prev_le`) or a category."""

    share: float
    le: str = ""
    prev_le: str = ""
    category: str = ""


@dataclass(frozen=True)
class FeatureConstants:
    role: str
    name: str
    kind: str
    bins: tuple[ReferenceBin, ...]
    size: int  # M: the reference values the shares are over
    noise_factor: float  # chi2.ppf(1 - alpha, B - 1)


def _numeric(feature: ReferenceFeature, plain: bool) -> tuple[tuple[ReferenceBin, ...], int]:
    # PSI buckets: (-inf, lo], (lo, p10], ..., (p90, max], (max, +inf); their counts are unions of
    # fine buckets, and their bounds are fine bounds, so `le` matches the exported series.
    counts = coarse_counts(np.asarray(feature.counts, dtype=np.int64), np.asarray(feature.psi_index))
    total = int(counts.sum())
    bounds = [format_le(edge, plain) for edge in feature.psi_edges] + ["+Inf"]
    bins = tuple(
        ReferenceBin(share=int(count) / total, le=le, prev_le=bounds[i - 1] if i else "")
        for i, (le, count) in enumerate(zip(bounds, counts, strict=True))
    )
    return bins, total


def _categorical(feature: ReferenceFeature) -> tuple[tuple[ReferenceBin, ...], int]:
    # The layout of the local scores: vocabulary, __other__, then __missing__.
    counts = (*feature.counts, feature.missing or 0)
    names = (*feature.vocabulary, "__other__", "__missing__")
    total = sum(counts)
    bins = tuple(ReferenceBin(share=c / total, category=n) for n, c in zip(names, counts, strict=True))
    return bins, total


def feature_constants(
    profile: ReferenceProfile, alpha: float, plain_le: bool = False
) -> list[FeatureConstants]:
    """The constants of every feature the profile can score (those with a distribution);
    `plain_le` spells bounds as remote write does (see `format_le`)."""
    out: list[FeatureConstants] = []
    for feature in profile.features:
        if not feature.has_distribution:
            continue
        if feature.kind == "numeric":
            if len(feature.counts) != len(feature.fine_edges) + 1 or not feature.psi_edges:
                continue
            bins, total = _numeric(feature, plain_le)
        else:
            bins, total = _categorical(feature)
        if total <= 0 or len(bins) < 2:
            continue
        factor = float(chi2.ppf(1.0 - alpha, len(bins) - 1))
        if not math.isfinite(factor):
            continue
        out.append(FeatureConstants(feature.role, feature.name, feature.kind, bins, total, factor))
    return out
