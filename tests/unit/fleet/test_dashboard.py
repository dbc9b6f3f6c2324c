"""`modeltap dashboard`: a Grafana JSON model whose every query reads a series the rules record."""

from __future__ import annotations

import json
import re
from pathlib import Path

from modeltap.cli import main as modeltap_main
from modeltap.fleet.dashboard import dashboard, panel_queries
from modeltap.fleet.rules import RuleOptions, rule_groups
from modeltap.reference import build_profile
from modeltap.reference.document import parse_reference, write_profile

DOCUMENT = build_profile(
    {"x": [float(i % 97) for i in range(600)], "c": ["a", "b", "c"] * 200}, model_name="m"
)
PROFILE = parse_reference(DOCUMENT)


def test_every_query_reads_a_recorded_series_of_this_reference() -> None:
    records = {
        r["record"]
        for g in rule_groups(PROFILE, RuleOptions())["groups"]
        for r in g["rules"]
        if "record" in r
    }
    board = dashboard(PROFILE)
    queries = panel_queries(board)
    assert len(queries) >= 10
    for title, expr in queries:
        names = set(re.findall(r"(modeltap:[a-z0-9_:]+)", expr))
        assert names, (title, expr)
        assert names <= records, (title, names - records)
        if "feature" in expr:
            assert PROFILE.id in expr, title


def test_variables_and_layout() -> None:
    board = dashboard(PROFILE, model_name="m")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", "model", "version", "feature"]
    assert variables["model"]["current"]["value"] == "m"
    assert variables["feature"]["current"]["value"] == "x"
    assert variables["version"]["multi"] is True
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, panel["title"]  # panels never overlap
        cells |= covered
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_the_command_writes_the_same_dashboard(tmp_path: Path) -> None:
    reference = tmp_path / "reference.json"
    write_profile(DOCUMENT, reference)
    output = tmp_path / "dashboard.json"
    assert modeltap_main(["dashboard", "--reference", str(reference), "-o", str(output)]) == 0
    assert json.loads(output.read_text()) == dashboard(PROFILE)
