"""Reference profiles: what the model saw in training, read from a versioned JSON file.

This module reads the parts the capture pipeline needs now (feature names, roles, kinds,
ranges and the id); the drift statistics build on the same document.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from modeltap.errors import ReferenceProfileError

FORMAT = "modeltap.reference"
SUPPORTED_VERSIONS = (1,)
ROLES = ("input", "output", "label")
KINDS = ("numeric", "categorical")


@dataclass(frozen=True)
class ReferenceFeature:
    name: str
    role: str
    kind: str
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None


@dataclass(frozen=True)
class ReferenceProfile:
    id: str
    features: tuple[ReferenceFeature, ...]
    model_name: str | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        """Positional feature names: the reference's input columns in order."""
        return tuple(f.name for f in self.features if f.role == "input")

    def feature(self, role: str, name: str) -> ReferenceFeature | None:
        for feature in self.features:
            if feature.role == role and feature.name == name:
                return feature
        return None


def _fail(path: str, message: str) -> ReferenceProfileError:
    return ReferenceProfileError(f"{path}: {message}")


def _number(path: str, where: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, f"{where} must be a finite number, got {value!r}")
    return float(value)


def parse_reference(document: Any, path: str = "<reference>") -> ReferenceProfile:
    if not isinstance(document, dict):
        raise _fail(path, "a reference profile is a JSON object")
    if document.get("format") != FORMAT:
        raise _fail(path, f'"format" must be {FORMAT!r}, got {document.get("format")!r}')
    if document.get("version") not in SUPPORTED_VERSIONS:
        raise _fail(path, f'"version" {document.get("version")!r} is not one of {SUPPORTED_VERSIONS}')
    ref_id = document.get("id")
    if not isinstance(ref_id, str) or not ref_id:
        raise _fail(path, '"id" must be a non-empty string')
    raw_features = document.get("features")
    if not isinstance(raw_features, list) or not raw_features:
        raise _fail(path, '"features" must be a non-empty list')
    features = []
    seen: set[tuple[str, str]] = set()
    for i, raw in enumerate(raw_features):
        where = f"features[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
            raise _fail(path, f"{where} needs a non-empty string 'name'")
        role = raw.get("role", "input")
        kind = raw.get("kind")
        if role not in ROLES:
            raise _fail(path, f"{where} ({raw['name']}): role must be one of {ROLES}, got {role!r}")
        if kind not in KINDS:
            raise _fail(path, f"{where} ({raw['name']}): kind must be one of {KINDS}, got {kind!r}")
        if (role, raw["name"]) in seen:
            raise _fail(path, f"{where}: duplicate {role} feature {raw['name']!r}")
        seen.add((role, raw["name"]))
        features.append(
            ReferenceFeature(
                name=raw["name"],
                role=role,
                kind=kind,
                min=_number(path, f"{where}.min", raw.get("min")),
                max=_number(path, f"{where}.max", raw.get("max")),
                mean=_number(path, f"{where}.mean", raw.get("mean")),
                std=_number(path, f"{where}.std", raw.get("std")),
            )
        )
    model = document.get("model")
    model_name = model.get("name") if isinstance(model, dict) and isinstance(model.get("name"), str) else None
    return ReferenceProfile(id=ref_id, features=tuple(features), model_name=model_name)


def load_reference(path: str | Path) -> ReferenceProfile:
    """Read and validate a reference profile; errors name the file and the field."""
    text = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise _fail(text, f"cannot read the reference profile ({exc.strerror or exc})") from None
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _fail(text, f"not valid JSON ({exc})") from None
    return parse_reference(document, text)


def numeric_profile_document(
    names: Sequence[str], data: np.ndarray, model_name: str | None = None
) -> dict[str, object]:
    """A reference document for numeric input columns (rows x features): kind, range and moments.

    The id is the sha256 of the canonical JSON of everything else, so equal data gives equal ids.
    """
    features = []
    for j, name in enumerate(names):
        column = data[:, j]
        finite = column[np.isfinite(column)]
        if finite.size == 0:
            raise ReferenceProfileError(f"column {name!r} has no finite values")
        features.append(
            {
                "name": name,
                "role": "input",
                "kind": "numeric",
                "min": float(finite.min()),
                "max": float(finite.max()),
                "mean": float(finite.mean()),
                "std": float(finite.std()),
            }
        )
    body: dict[str, object] = {"format": FORMAT, "version": 1, "features": features}
    if model_name:
        body["model"] = {"name": model_name}
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return {**body, "id": f"sha256:{digest[:16]}"}
