"""A small YAML writer for the documents this package generates (rule files).

Only what those documents hold: mappings with string keys, lists, strings, numbers, booleans.
Strings are written double-quoted with every unprintable character escaped, or as literal
blocks when they span lines, so no value can change meaning when read back."""

from __future__ import annotations

import math
import re
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
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        # YAML 1.1 readers (PyYAML) need a dot in the mantissa: 5e-324 would read as a string.
        return f"{mantissa}.0e{exponent}" if exponent and "." not in mantissa else text
    return _quoted(value)


def _quoted(value: str) -> str:
    """A YAML double-quoted scalar: printable text as is, everything else escaped."""
    out = []
    for c in value:
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif c.isprintable() and c not in _BREAKS:
            out.append(c)
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


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


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words YAML 1.1 readers (PyYAML, and Go's yaml.v2 that Prometheus once used) take as booleans or null.
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}
_BREAKS = set("\r\x85\u2028\u2029\ufeff")


def _key(key: str) -> str:
    plain = _PLAIN_KEY.fullmatch(key) is not None and key.lower() not in _RESERVED
    return key if plain else _quoted(key)


def _block(value: str) -> bool:
    """Whether a literal block holds `value` exactly: several lines, at most one final newline,
    printable text, no first-line indentation and no blank line made of spaces."""
    if "\n" not in value.rstrip("\n") or value.endswith("\n\n") or value[:1] in (" ", "\t"):
        return False
    if any(c in _BREAKS or not (c.isprintable() or c in "\n\t") for c in value):
        return False
    return all(line.strip(" \t") or not line for line in value.split("\n"))


def _entry(head: str, value: Node, indent: int) -> list[str]:
    if isinstance(value, str) and _block(value):
        chomp = "" if value.endswith("\n") else "-"
        body = value.removesuffix("\n").split("\n")
        return [f"{head} |{chomp}", *(" " * (indent + 2) + line if line else "" for line in body)]
    if isinstance(value, Mapping):
        return [f"{head} {{}}"] if not value else [head, *_lines(value, indent + 2)]
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [f"{head} []"] if not value else [head, *_lines(value, indent + 2)]
    return [f"{head} {_scalar(value)}"]


def dump(document: Node, header: str = "") -> str:
    """The document as YAML text, after `header` written as comment lines."""
    comments = [f"# {line}".rstrip() for line in header.splitlines()]
    return "\n".join([*comments, *_lines(document, 0)]) + "\n"
