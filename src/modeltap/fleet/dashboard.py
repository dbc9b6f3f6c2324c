"""A Grafana dashboard over the series `modeltap rules` records.

`modeltap dashboard --reference ref.json -o dashboard.json` writes a dashboard (Grafana's JSON
model, importable by hand or by provisioning) with model, version and feature variables and
panels for the drift levels, PSI and Jensen-Shannon per feature over time, the reference-vs-window
shares of the chosen feature, latency percentiles, request rate, error ratio, drops and
violations. Every query reads recorded series only (no `$__interval` arithmetic), so what the
panels show is what the rules and alerts decide on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from modeltap.fleet import names as n
from modeltap.fleet import rules as r
from modeltap.reference.document import ReferenceProfile

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
LEVEL_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "OK", "color": "green", "index": 0},
            "2": {"text": "WARNING", "color": "orange", "index": 1},
            "3": {"text": "CRITICAL", "color": "red", "index": 2},
        },
    }
]


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # Grafana panel type
    queries: tuple[tuple[str, str], ...]  # (expr, legend)
    unit: str = "short"
    instant: bool = False
    width: int = 12
    height: int = 8
    description: str = ""


def _panels(profile: ReferenceProfile) -> list[Panel]:
    model = f'{n.MODEL}="$model", {n.VERSION}=~"$version"'
    drift = f'{n.REFERENCE}="{profile.id}", {model}'
    feature = f'{drift}, {n.FEATURE}="$feature"'
    by_feature = f"{{{{{n.FEATURE}}}}} ({{{{{n.ROLE}}}}})"
    return [
        Panel(
            "Drift level per feature",
            "stat",
            ((f"{r.LEVEL}{{{drift}}}", by_feature),),
            instant=True,
            width=24,
            height=5,
            description="Across all replicas: 0 OK, 2 WARNING, 3 CRITICAL (INFO stays local).",
        ),
        Panel("PSI per feature", "timeseries", ((f"{r.PSI}{{{drift}}}", by_feature),)),
        Panel("Jensen-Shannon distance per feature", "timeseries", ((f"{r.JS}{{{drift}}}", by_feature),)),
        Panel(
            "Reference vs window: $feature",
            "barchart",
            (
                (f"{r.BIN_REFERENCE}{{{feature}}}", "reference"),
                (f"{r.BIN_RATIO}{{{feature}}}", "window"),
            ),
            unit="percentunit",
            instant=True,
            width=24,
            description="Shares of the PSI buckets (upper bound le) or categories, all replicas summed.",
        ),
        Panel(
            "Latency percentiles",
            "timeseries",
            tuple(
                (f"{r.LATENCY.format(q)}{{{model}}}", f"p{q} {{{{{n.VERSION}}}}}") for q in ("50", "95", "99")
            ),
            unit="s",
        ),
        Panel(
            "Request rate",
            "timeseries",
            ((f"{r.REQUEST_RATE}{{{model}}}", f"{{{{{n.VERSION}}}}}"),),
            unit="reqps",
        ),
        Panel(
            "Error ratio (5xx)",
            "timeseries",
            ((f"{r.ERROR_RATIO}{{{model}}}", f"{{{{{n.VERSION}}}}}"),),
            unit="percentunit",
        ),
        Panel(
            "Data-quality violations",
            "timeseries",
            ((f"{r.VIOLATION_RATE}{{{model}}}", f"{{{{{n.VIOLATION_REASON}}}}}"),),
            unit="ops",
        ),
        Panel(
            "Telemetry dropped",
            "timeseries",
            ((f"{r.DROP_RATE}", f"{{{{job}}}} {{{{{n.DROP_REASON}}}}}"),),
            unit="ops",
            width=24,
            description="Exchanges modeltap could not analyse (the model's answers are unaffected).",
        ),
    ]


def _grid(panels: list[Panel]) -> Iterator[tuple[Panel, dict[str, int]]]:
    x = y = row_height = 0
    for panel in panels:
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        yield panel, {"x": x, "y": y, "w": panel.width, "h": panel.height}
        x += panel.width
        row_height = max(row_height, panel.height)


def _panel_json(index: int, panel: Panel, grid: dict[str, int]) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.title.startswith("Drift level"):
        defaults["mappings"] = LEVEL_MAPPINGS
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [
                {"color": "green", "value": None},
                {"color": "orange", "value": 2},
                {"color": "red", "value": 3},
            ],
        }
    return {
        "id": index,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}} if panel.kind == "stat" else {},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "instant": panel.instant,
                "range": not panel.instant,
                **({"format": "table"} if panel.kind == "barchart" else {}),
            }
            for i, (expr, legend) in enumerate(panel.queries)
        ],
    }


def _variable(name: str, label: str, query: str, multi: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        **({"allValue": ".*"} if multi else {}),
    }


def dashboard(profile: ReferenceProfile, model_name: str | None = None) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    name = model_name or profile.model_name or ""
    scored = f'{n.REFERENCE}="{profile.id}"'
    panels = _panels(profile)
    features = [f.name for f in profile.features if f.has_distribution]
    variables = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
        _variable("model", "Model", f"label_values({r.LEVEL}{{{scored}}}, {n.MODEL})"),
        _variable(
            "version",
            "Version",
            f'label_values({r.LEVEL}{{{scored}, {n.MODEL}="$model"}}, {n.VERSION})',
            multi=True,
        ),
        _variable(
            "feature",
            "Feature",
            f'label_values({r.BIN_RATIO}{{{scored}, {n.MODEL}="$model"}}, {n.FEATURE})',
        ),
    ]
    if name:
        variables[1]["current"] = {"text": name, "value": name}
    if features:
        variables[3]["current"] = {"text": features[0], "value": features[0]}
    return {
        "title": f"modeltap: {name or 'models'} (fleet)",
        "uid": "modeltap-" + profile.id.removeprefix("sha256:")[:12],
        "description": f"Fleet drift, latency and errors from `modeltap rules`; reference {profile.id}.",
        "tags": ["modeltap"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables},
        "panels": [_panel_json(i + 1, p, grid) for i, (p, grid) in enumerate(_grid(panels))],
    }


def dashboard_text(profile: ReferenceProfile, model_name: str | None = None) -> str:
    return json.dumps(dashboard(profile, model_name), indent=2) + "\n"


def panel_queries(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every panel target: what a test or a user can evaluate directly."""
    return [(p["title"], t["expr"]) for p in document["panels"] for t in p["targets"]]
