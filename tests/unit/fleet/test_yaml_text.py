"""The YAML writer reads back, through a real YAML parser, as the document it was given."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from modeltap.fleet.yaml_text import dump

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
scalars = st.one_of(
    text, st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False), st.booleans()
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)


@given(st.dictionaries(text, documents, max_size=5))
def test_any_document_reads_back_unchanged(document: dict[str, Any]) -> None:
    assert yaml.safe_load(dump(document)) == (document or None)


def test_expressions_become_literal_blocks_and_templates_stay_intact() -> None:
    document: dict[str, Any] = {
        "groups": [
            {
                "name": "g",
                "rules": [
                    {"record": "a:b", "expr": 'sum by (x) (\n  m{l="v"}\n)\n'},
                    {"alert": "A", "annotations": {"summary": '{{ $value | printf "%.3f" }}: x'}},
                ],
            }
        ]
    }
    written = dump(document, header="line one\nline two")
    assert written.startswith("# line one\n# line two\n")
    assert "expr: |\n" in written
    loaded = yaml.safe_load(written)
    assert loaded["groups"][0]["rules"][0]["expr"] == 'sum by (x) (\n  m{l="v"}\n)\n'
    assert loaded["groups"][0]["rules"][1]["annotations"]["summary"] == '{{ $value | printf "%.3f" }}: x'
