"""A user mapping for JSON no built-in decoder knows: roles to simple dotted paths.

    FieldMapping.parse({
        "features": "payload.rows[*]",        # one row per element of payload.rows (request)
        "outputs": "result.scores[*]",        # one output row per element (response)
        "model_version": "meta.version",      # response, else request
        "request_id": "meta.id",
    })

Keys (roles and targets):
- `features` / `outputs`: the rows. With `[*]` each element (after the rest of the path) is a row;
  without it the value is one row. A row is a record (object: keys are columns), a list
  (positional: the reference profile's names or `f{j}`; outputs `prediction{j}`) or a scalar.
  A single unnamed output column is `prediction`.
- `features.<name>` / `outputs.<name>`: one named column, one value per row (`[*]`) or a single
  value. Named columns join the rows of `features` / `outputs`; their length must match the number
  of rows (a mismatch counts `schema`, the column is cut or padded with missing values).
- `model_name`, `model_version`, `request_id`: a single value (no `[*]`).

Documents: `features` paths read the request, `outputs` paths the response, identity paths the
response and then the request. A `request:` or `response:` prefix picks the document explicitly.
An identity path that finds nothing leaves the identity the URL named (PROTOCOLS.md section 7: the
URL comes before the payload), as a mapping without identity paths does.

Path syntax: `a.b`, `a[0]`, `a[*]` (at most one: the batch rows), quoted keys `a["x.y"]` or
`a['x.y']` (backslash escapes the quote and itself), an optional leading `$` for the document root
(`$` alone, `$[*]`, `$.a`). Bare keys are any characters except `.`, `[`, `]`, quotes and spaces.
Invalid mappings raise `ValueError` at parse time (a configuration error).

Decoding never raises: a path that does not resolve counts `schema` (per row under `[*]`), values
count `missing` / `type` as in every decoder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modeltap.protocols.payload import Column, DecodedPayload, ExchangeBytes, count
from modeltap.protocols.tabular import rows_to_columns

KEY, INDEX, STAR = 0, 1, 2
Step = tuple[int, Any]  # (KEY, str) | (INDEX, int) | (STAR, None)

ROLES = ("features", "outputs", "model_name", "model_version", "request_id")
_IDENTITY_ROLES = ("model_name", "model_version", "request_id")
_DOCUMENTS = ("request", "response")
MAX_PATH_CHARS = 1024
MAX_PATH_STEPS = 64
_MAX_ID_CHARS = 128
_BARE = re.compile(r"[^.\[\]\"'\s]+")
_DIGITS = re.compile(r"[0-9]+")
_MISSING: Any = object()


@dataclass(frozen=True)
class FieldPath:
    """One parsed path: steps before the `[*]` and, with a fan-out, the steps after it."""

    text: str
    document: str | None  # "request", "response" or None (the role's default)
    head: tuple[Step, ...]
    tail: tuple[Step, ...] | None  # None: no [*]

    @classmethod
    def parse(cls, text: str) -> FieldPath:
        """Parse `text`; ValueError naming the position and the problem if it is not a path."""
        if not isinstance(text, str):
            raise ValueError(f"a path must be a string, not {type(text).__name__}")
        if len(text) > MAX_PATH_CHARS:
            raise ValueError(f"path longer than {MAX_PATH_CHARS} characters")
        body = text.strip()
        base = len(text) - len(text.lstrip())
        document = None
        for name in _DOCUMENTS:
            if body.startswith(name + ":"):
                document = name
                body = body[len(name) + 1 :]
                base += len(name) + 1
                break
        steps = _parse_steps(body, base, text)
        stars = [i for i, (kind, _) in enumerate(steps) if kind == STAR]
        if len(stars) > 1:
            raise ValueError(f"invalid path {text!r}: only one [*] is allowed (the batch rows)")
        if stars:
            return cls(text, document, tuple(steps[: stars[0]]), tuple(steps[stars[0] + 1 :]))
        return cls(text, document, tuple(steps), None)

    @property
    def fans_out(self) -> bool:
        return self.tail is not None

    def value(self, document: Any) -> Any:
        """The value at a path without [*]; _MISSING when it does not resolve."""
        return _walk(document, self.head)

    def values(self, document: Any) -> list[Any] | None:
        """Per-row values at a path with [*] (_MISSING for rows where the tail does not resolve),
        or None when the part before [*] is not a list."""
        items = _walk(document, self.head)
        if not isinstance(items, list):
            return None
        tail = self.tail or ()
        if not tail:
            return items
        return [_walk(item, tail) for item in items]


def _error(text: str, position: int, problem: str) -> ValueError:
    return ValueError(f"invalid path {text!r} at position {position}: {problem}")


def _parse_steps(body: str, base: int, text: str) -> list[Step]:
    steps: list[Step] = []
    pos = 0
    rooted = body.startswith("$")
    if rooted:
        pos = 1
    need_separator = rooted
    while pos < len(body):
        if len(steps) >= MAX_PATH_STEPS:
            raise _error(text, base + pos, f"more than {MAX_PATH_STEPS} steps")
        ch = body[pos]
        if ch == "[":
            pos, step = _parse_bracket(body, pos, base, text)
        elif ch == ".":
            if not need_separator:
                raise _error(text, base + pos, "unexpected '.' (a key must come first)")
            match = _BARE.match(body, pos + 1)
            if match is None:
                raise _error(text, base + pos + 1, "expected a key after '.'")
            step = (KEY, match.group())
            pos = match.end()
        else:
            if need_separator:
                raise _error(text, base + pos, f"expected '.' or '[' before {ch!r}")
            match = _BARE.match(body, pos)
            if match is None:
                raise _error(text, base + pos, f'unexpected {ch!r} (quote keys as ["..."])')
            step = (KEY, match.group())
            pos = match.end()
        steps.append(step)
        need_separator = True
    if not steps and not rooted:
        raise ValueError(f"invalid path {text!r}: empty (use $ for the whole document)")
    return steps


def _parse_bracket(body: str, pos: int, base: int, text: str) -> tuple[int, Step]:
    """`[0]`, `[*]`, `["key"]` or `['key']` at body[pos] == '['; (position after ']', step)."""
    start = pos + 1
    if start >= len(body):
        raise _error(text, base + pos, "unclosed '['")
    ch = body[start]
    step: Step
    if ch == "*":
        step, end = (STAR, None), start + 1
    elif ch.isdigit():
        match = _DIGITS.match(body, start)
        assert match is not None
        step, end = (INDEX, int(match.group())), match.end()
    elif ch in "\"'":
        key: list[str] = []
        end = start + 1
        while True:
            if end >= len(body):
                raise _error(text, base + start, "unterminated quoted key")
            c = body[end]
            if c == "\\":
                if end + 1 < len(body) and body[end + 1] in (ch, "\\"):
                    key.append(body[end + 1])
                    end += 2
                    continue
                raise _error(text, base + end, "a backslash escapes only the quote or a backslash")
            if c == ch:
                end += 1
                break
            key.append(c)
            end += 1
        step = (KEY, "".join(key))
    elif ch == "-":
        raise _error(text, base + start, "negative indexes are not supported")
    else:
        raise _error(text, base + start, "expected an index, '*' or a quoted key inside '[...]'")
    if end >= len(body) or body[end] != "]":
        raise _error(text, base + end, "expected ']'")
    return end + 1, step


def _walk(value: Any, steps: tuple[Step, ...]) -> Any:
    for kind, key in steps:
        if kind == KEY:
            if not isinstance(value, dict) or key not in value:
                return _MISSING
            value = value[key]
        else:
            if not isinstance(value, list) or key >= len(value):
                return _MISSING
            value = value[key]
    return value


def _text(value: Any) -> str | None:
    """An identity value as printable, bounded text; None for anything that is not a scalar."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    text = value if isinstance(value, str) else str(value)
    cleaned = "".join(ch for ch in text[:_MAX_ID_CHARS] if ch.isprintable())
    return cleaned or None


@dataclass(frozen=True)
class FieldMapping:
    """A parsed payload mapping; build it with `FieldMapping.parse`."""

    features: FieldPath | None = None
    outputs: FieldPath | None = None
    feature_columns: tuple[tuple[str, FieldPath], ...] = ()
    output_columns: tuple[tuple[str, FieldPath], ...] = ()
    model_name: FieldPath | None = None
    model_version: FieldPath | None = None
    request_id: FieldPath | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, str]) -> FieldMapping:
        """Parse `{role or target: path}`; ValueError with the offending key on any problem."""
        if not isinstance(spec, Mapping):
            raise ValueError(f"payload mapping must be an object of role: path, not {type(spec).__name__}")
        if not spec:
            raise ValueError("payload mapping is empty: map at least one of " + ", ".join(ROLES))
        paths: dict[str, FieldPath] = {}
        columns: dict[str, list[tuple[str, FieldPath]]] = {"features": [], "outputs": []}
        for key, text in spec.items():
            if not isinstance(key, str):
                raise ValueError(f"payload mapping key {key!r} is not a string")
            role, dot, column = key.partition(".")
            if role not in ROLES or (dot and role not in columns):
                raise ValueError(
                    f"payload mapping key {key!r} is not one of {', '.join(ROLES)}, "
                    "features.<column> or outputs.<column>"
                )
            if dot and not column:
                raise ValueError(f"payload mapping key {key!r} names no column after '.'")
            try:
                path = FieldPath.parse(text)
            except ValueError as exc:
                raise ValueError(f"payload mapping {key!r}: {exc}") from None
            if role in _IDENTITY_ROLES and path.fans_out:
                raise ValueError(f"payload mapping {key!r}: {role} is a single value, [*] is not allowed")
            if dot:
                columns[role].append((column, path))
            else:
                paths[role] = path
        return cls(
            features=paths.get("features"),
            outputs=paths.get("outputs"),
            feature_columns=tuple(columns["features"]),
            output_columns=tuple(columns["outputs"]),
            model_name=paths.get("model_name"),
            model_version=paths.get("model_version"),
            request_id=paths.get("request_id"),
        )

    def _feature_paths(self) -> list[FieldPath]:
        paths = [path for _, path in self.feature_columns]
        return paths if self.features is None else [self.features, *paths]

    def matches(self, exchange: ExchangeBytes, request: Any) -> bool:
        """Whether the request holds what this mapping reads from it: True when some request-side
        features path resolves (or the mapping reads no features from the request)."""
        paths = [path for path in self._feature_paths() if path.document != "response"]
        if not paths:
            return request is not None
        for path in paths:
            if path.fans_out:
                if path.values(request) is not None:
                    return True
            elif path.value(request) is not _MISSING:
                return True
        return False

    def decode(self, request: Any, response: Any, exchange: ExchangeBytes, out: DecodedPayload) -> None:
        """Columns, outputs and identity by the mapping; never raises on any JSON value."""
        out.protocol = "mapping"
        documents = {"request": request, "response": response}
        violations = out.violations
        if self.features is not None or self.feature_columns:
            out.features, out.rows = _columns(
                self.features,
                self.feature_columns,
                documents,
                "request",
                tuple(exchange.feature_names),
                "f",
                violations,
            )
        if self.outputs is not None or self.output_columns:
            outputs, _ = _columns(
                self.outputs, self.output_columns, documents, "response", (), "prediction", violations
            )
            if self.outputs is not None and list(outputs) == ["prediction0"]:
                outputs = {"prediction": outputs["prediction0"]}
            out.outputs = outputs
        for role in _IDENTITY_ROLES:
            path: FieldPath | None = getattr(self, role)
            if path is None:
                continue
            value = _identity(path, documents, violations)
            # Nothing found (or nothing usable) must not wipe what the URL named before us.
            if value is not None:
                setattr(out, role, value)


def _rows(path: FieldPath, document: Any, violations: dict[str, int]) -> list[Any] | None:
    """A path's per-row values in `document` (_MISSING where a row lacks it); None if it is absent."""
    if path.fans_out:
        values = path.values(document)
        if values is None:
            count(violations, "schema")
            return None
        absent = sum(1 for value in values if value is _MISSING)
        if absent:
            count(violations, "schema", absent)
        return values
    value = path.value(document)
    if value is _MISSING:
        count(violations, "schema")
        return None
    return [value]


def _columns(
    rows_path: FieldPath | None,
    named: tuple[tuple[str, FieldPath], ...],
    documents: dict[str, Any],
    default: str,
    names: tuple[str, ...],
    prefix: str,
    violations: dict[str, int],
) -> tuple[dict[str, Column], int]:
    columns: dict[str, Column] = {}
    n: int | None = None
    if rows_path is not None:
        document = documents[rows_path.document or default]
        # A side that was not captured (an error response, no body) has nothing to read.
        rows = None if document is None else _rows(rows_path, document, violations)
        if rows is not None:
            rows = [{} if row is _MISSING else row for row in rows]
            columns, n = rows_to_columns(rows, names, violations, prefix)
    for name, path in named:
        document = documents[path.document or default]
        if document is None:
            continue
        values = _rows(path, document, violations)
        if values is None:
            continue
        if n is None:
            n = len(values)
        elif len(values) != n:
            count(violations, "schema")
            values = values[:n] + [_MISSING] * (n - len(values))
        column_rows = [{} if value is _MISSING else {name: value} for value in values]
        named_columns, _ = rows_to_columns(column_rows, (), violations)
        columns.update(named_columns)
    return columns, n or 0


def _identity(path: FieldPath, documents: dict[str, Any], violations: dict[str, int]) -> str | None:
    order = (path.document,) if path.document else ("response", "request")
    present = False
    for name in order:
        document = documents[name]
        if document is None:
            continue
        present = True
        value = path.value(document)
        if value is _MISSING:
            continue
        text = _text(value)
        if text is None and value is not None:
            count(violations, "type")
        return text
    if present:
        count(violations, "schema")
    return None
