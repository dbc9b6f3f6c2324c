"""Predictions waiting for their labels, bounded by entries, bytes and age.

A prediction is kept under its join key (the request id and the row, or a business key taken
from an input column) with only what the performance metrics need: the model version, the
predicted class or value, the positive-class score, a segment value. A label that arrives joins
it once; everything else is counted by reason, never dropped silently:

- `joined`: a label met its prediction (the label delay is returned);
- `duplicate`: the same label again for a key already joined (counted once);
- `conflict`: a different label for a key already joined (the first one wins);
- `early`: a label that came before its prediction waits (briefly, bounded) for it; if the
  prediction does not come in time it is counted as `unmatched`;
- `expired`: a prediction no label reached within the TTL;
- `evicted`: a prediction pushed out by the entry or byte bound before its TTL.

Keys come from clients: the store never grows past its bounds whatever they send. The clock is
passed in (monotonic seconds), so the store has no I/O and no time source of its own.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

# Bytes charged per entry besides its strings: the key tuple, the record, the dict slot.
ENTRY_OVERHEAD_BYTES = 240

Label = str | float | tuple[str, ...]  # a class or value; a ranked list of items (rankers)


@dataclass(frozen=True)
class Prediction:
    model: str
    version: str
    predicted: Label | None
    score: float | None = None  # positive-class probability, for AUC, log loss and Brier
    segment: str | None = None
    created_s: float = 0.0


@dataclass(frozen=True)
class Joined:
    prediction: Prediction
    label: Label
    delay_s: float


def _key_bytes(key: Hashable) -> int:
    return sum(len(str(part)) for part in key) if isinstance(key, tuple) else len(str(key))


def _label_size(key: Hashable, label: Label) -> int:
    """Bytes charged for an early label (a ranker's label is a list of up to 100 items)."""
    text = sum(len(item) for item in label) if isinstance(label, tuple) else len(str(label))
    key_bytes = _key_bytes(key)
    return ENTRY_OVERHEAD_BYTES + key_bytes + text


def _fingerprint(label: Label) -> Label | bytes:
    """What a joined key keeps of its label, to tell a repeat from a conflict: a class or a value
    as it is (small), a ranker's list (up to 100 items of 256 characters) by a 128-bit digest of
    its items in order."""
    if not isinstance(label, tuple):
        return label
    digest = hashlib.blake2b(digest_size=16)
    for item in label:
        digest.update(len(item).to_bytes(4, "little"))
        digest.update(item.encode("utf-8", "surrogatepass"))
    return digest.digest()


def _size(key: Hashable, prediction: Prediction) -> int:
    strings = [prediction.model, prediction.version, prediction.segment or ""]
    if isinstance(prediction.predicted, str):
        strings.append(prediction.predicted)
    elif isinstance(prediction.predicted, tuple):
        strings.extend(prediction.predicted)
    key_bytes = _key_bytes(key)
    return ENTRY_OVERHEAD_BYTES + key_bytes + sum(len(s) for s in strings)


class JoinStore:
    """Bounded join of predictions and labels. Not thread-safe: one owner (the monitor's worker)."""

    def __init__(
        self,
        max_entries: int = 200_000,
        max_bytes: int = 64 * 1024 * 1024,
        ttl_s: float = 24 * 3600.0,
        early_ttl_s: float = 60.0,
        max_early: int = 10_000,
        max_joined_keys: int = 200_000,
    ) -> None:
        if max_entries < 1 or max_bytes < ENTRY_OVERHEAD_BYTES or ttl_s <= 0 or early_ttl_s <= 0:
            raise ValueError("join store bounds must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.early_ttl_s = early_ttl_s
        self.max_early = max_early
        self.max_joined_keys = max_joined_keys
        self._pending: OrderedDict[Hashable, tuple[Prediction, int]] = OrderedDict()
        self._bytes = 0
        # Labels waiting for their prediction: bounded in number and, as they come from clients
        # (a ranker's label is a list), in bytes: a quarter of `max_bytes`.
        self._early: OrderedDict[Hashable, tuple[Label, float, int]] = OrderedDict()
        self._early_bytes = 0
        self.max_early_bytes = max_bytes // 4
        # Keys already joined, with their label's fingerprint: a later label for one is a
        # duplicate or a conflict.
        self._joined: OrderedDict[Hashable, tuple[Label | bytes, float]] = OrderedDict()
        self.counts: Counter[str] = Counter()

    @property
    def entries(self) -> int:
        return len(self._pending)

    @property
    def bytes(self) -> int:
        return self._bytes

    def add_prediction(self, key: Hashable, prediction: Prediction, now: float) -> Joined | None:
        """Keep `prediction` until its label comes; joins at once with a label that came early."""
        self.expire(now)
        early = self._early.pop(key, None)
        if early is not None:
            self._early_bytes -= early[2]
            return self._join(key, prediction, early[0], now)
        if key in self._joined:
            return None  # the same request seen twice after it was labelled: nothing to wait for
        old = self._pending.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
            self.counts["replaced"] += 1
        size = _size(key, prediction)
        self._pending[key] = (prediction, size)
        self._bytes += size
        while len(self._pending) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, evicted_size) = self._pending.popitem(last=False)
            self._bytes -= evicted_size
            self.counts["evicted"] += 1
        return None

    def add_label(self, key: Hashable, label: Label, now: float) -> Joined | str:
        """Join `label` to its prediction: the join, or what became of the label instead
        (`duplicate`, `conflict`, or `early`: it waits for its prediction), counted."""
        self.expire(now)
        joined = self._joined.get(key)
        waiting = self._early.get(key)
        if joined is not None or waiting is not None:
            same = (
                joined[0] == _fingerprint(label)
                if joined is not None
                else waiting is not None and waiting[0] == label
            )
            outcome = "duplicate" if same else "conflict"
            self.counts[outcome] += 1
            return outcome
        pending = self._pending.pop(key, None)
        if pending is None:
            size = _label_size(key, label)
            self._early[key] = (label, now, size)
            self._early_bytes += size
            self.counts["early"] += 1
            while len(self._early) > self.max_early or self._early_bytes > self.max_early_bytes:
                _, (_, _, dropped) = self._early.popitem(last=False)
                self._early_bytes -= dropped
                self.counts["unmatched"] += 1
            return "early"
        self._bytes -= pending[1]
        return self._join(key, pending[0], label, now)

    def _join(self, key: Hashable, prediction: Prediction, label: Label, now: float) -> Joined:
        self._joined[key] = (_fingerprint(label), now)
        while len(self._joined) > self.max_joined_keys:
            self._joined.popitem(last=False)
        self.counts["joined"] += 1
        return Joined(prediction, label, max(0.0, now - prediction.created_s))

    def expire(self, now: float) -> None:
        """Count and drop predictions older than the TTL and early labels older than theirs."""
        while self._pending:
            prediction, size = next(iter(self._pending.values()))
            if now - prediction.created_s < self.ttl_s:
                break
            self._pending.popitem(last=False)
            self._bytes -= size
            self.counts["expired"] += 1
        while self._early:
            _, arrived, size = next(iter(self._early.values()))
            if now - arrived < self.early_ttl_s:
                break
            self._early.popitem(last=False)
            self._early_bytes -= size
            self.counts["unmatched"] += 1
        while self._joined:
            _, joined_at = next(iter(self._joined.values()))
            if now - joined_at < self.ttl_s:
                break
            self._joined.popitem(last=False)
