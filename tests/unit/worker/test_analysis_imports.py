"""When the statistics' SciPy is imported: up front for an analysis inside a serving process (on
first use it would hold the interpreter for most of a second beside the requests), on first use
in a monitor process (which then takes its serving processes' connections sooner)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import modeltap

SRC = str(Path(modeltap.__file__).resolve().parents[1])
MADE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from modeltap.config import ModelTapConfig
from modeltap.worker.analyzer import Analyzer
before = "scipy.stats" in sys.modules
Analyzer(ModelTapConfig(model_name="m"), None, mode=sys.argv[2])
print(json.dumps([before, "scipy.stats" in sys.modules, "scipy.spatial.distance" in sys.modules]))
"""


@pytest.mark.parametrize(("mode", "loaded"), [("inline", True), ("process", False)])
def test_an_inline_analysis_imports_scipy_when_made_a_monitors_on_first_use(mode: str, loaded: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MODELTAP_"))}
    out = subprocess.run(
        [sys.executable, "-c", MADE, SRC, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [False, loaded, loaded]


def test_the_scores_import_scipy_on_first_use() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import numpy as np; "
        "from modeltap.stats import scores; a = 'scipy.stats' in sys.modules; "
        "scores.ks_binned(np.array([5.0, 5.0]), np.array([4.0, 6.0])); "
        "print(a, 'scipy.stats' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, SRC], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "True"]
