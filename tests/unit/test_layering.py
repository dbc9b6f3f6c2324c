"""The dependency direction of DESIGN.md, enforced: adapters → tap → (protocols | stats | export)
→ leaves. A module may import its own package, the layers below it, and nothing beside it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "modeltap"

LEAVES = {"_speedups", "_types", "_version", "errors", "records", "config", "snapshot", "redaction"}
# What each part may import from modeltap, besides itself and the leaves.
ALLOWED: dict[str, set[str]] = {
    "leaf": set(),
    "capture": set(),
    "protocols": set(),
    "reference": set(),
    "stats": {"reference"},
    "fleet": {"reference", "stats", "export"},
    "client": set(),
    # fleet.names: the Prometheus label names Alertmanager alerts share with the rules' alerts.
    "alerts": {"stats", "reference", "fleet"},
    "operations": set(),
    "guarded": {"capture"},
    "export": set(),
    "handoff": {"capture", "export"},
    "worker": {"capture", "protocols", "reference", "stats", "export", "handoff", "alerts", "operations"},
    "monitor": {
        "capture",
        "protocols",
        "reference",
        "stats",
        "export",
        "handoff",
        "worker",
        "alerts",
        "operations",
        "guarded",
    },
    "middleware": {"capture", "protocols", "reference", "stats", "export", "handoff", "worker"},
    "demo": {"capture", "protocols", "reference", "stats", "export", "worker", "middleware", "sidecar"},
    "sidecar": {
        "capture",
        "protocols",
        "reference",
        "stats",
        "export",
        "handoff",
        "worker",
        "middleware",
        "monitor",
        "alerts",
        "guarded",
        "operations",
    },
    "cli": {"demo", "middleware", "reference", "stats", "export", "sidecar", "monitor", "fleet", "client"},
    "__init__": {"middleware", "reference"},
}


def _part(path: Path) -> str:
    top = path.relative_to(SRC).parts[0].removesuffix(".py")
    return "leaf" if top in LEAVES else top


def _modeltap_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name == "modeltap" or name.startswith("modeltap."):
                parts = name.split(".")
                found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


MODULES = sorted(p for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_module_imports_only_layers_below(path: Path) -> None:
    part = _part(path)
    allowed = ALLOWED[part] | LEAVES | {part}
    forbidden = {name for name in _modeltap_imports(path) if name not in allowed and name != "__init__"}
    if part == "leaf":
        forbidden = {name for name in _modeltap_imports(path) if name not in LEAVES}
    assert not forbidden, f"{path.relative_to(SRC)} ({part}) imports {sorted(forbidden)}"


def test_capture_and_stats_never_import_each_other() -> None:
    for path in (SRC / "capture").rglob("*.py"):
        assert "stats" not in _modeltap_imports(path), path
    for path in (SRC / "stats").rglob("*.py"):
        assert "capture" not in _modeltap_imports(path), path


def test_stats_has_no_io_asyncio_or_opentelemetry() -> None:
    for path in (SRC / "stats").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                assert module is None or not module.startswith(("asyncio", "opentelemetry", "socket")), (
                    f"{path.name} imports {module}"
                )


def test_every_part_is_classified() -> None:
    parts = {_part(p) for p in MODULES}
    assert parts <= set(ALLOWED), parts - set(ALLOWED)
