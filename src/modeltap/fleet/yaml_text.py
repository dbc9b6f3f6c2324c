"""A small YAML writer for the documents this package generates (rule files).

Only what those documents hold: mappings with string keys, lists, strings, numbers, booleans.
Strings are written as JSON strings (a JSON string is a valid YAML double-quoted scalar), or as
literal blocks when they span lines, so no value can change meaning when read back."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

Node = Mapping[str, "Node"] | Sequence["Node"] | str | int | float | bool


def _scalar(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"YAML documents here hold finite numbers only, got {value!r}")
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _lines(node: Node, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            out.extend(_entry(f"{pad}{_key(key)}:", value, indent))
    elif isinstance(node, Sequence) and not isinstance(node, str):
        for item in node:
            if isinstance(item, Mapping) and item:
                inner = _lines(item, indent + 2)
                out.append(f"{pad}- {inner[0].lstrip()}")
                out.extend(inner[1:])
            else:
                out.extend(_entry(f"{pad}-", item, indent))
    else:
        out.append(pad + _scalar(node))
    return out


def _key(key: str) -> str:
    plain = key.replace("_", "").replace("-", "").isalnum() and not key[:1].isdigit()
    return key if plain else json.dumps(key)


def _entry(head: str, value: Node, indent: int) -> list[str]:
    if isinstance(value, str) and "\n" in value:
        body = value.rstrip("\n").split("\n")
        return [f"{head} |-", *(" " * (indent + 2) + line if line else "" for line in body)]
    if isinstance(value, Mapping):
        return [f"{head} {{}}"] if not value else [head, *_lines(value, indent + 2)]
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [f"{head} []"] if not value else [head, *_lines(value, indent + 2)]
    return [f"{head} {_scalar(value)}"]


def dump(document: Node, header: str = "") -> str:
    """The document as YAML text, after `header` written as comment lines."""
    comments = [f"# {line}".rstrip() for line in header.splitlines()]
    return "\n".join([*comments, *_lines(document, 0)]) + "\n"
