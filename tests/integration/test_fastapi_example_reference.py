"""The README's middleware walkthrough builds a reference that matches `examples/fastapi_app.py`:
the example writes its training table, `modeltap profile` turns it into the reference, and served
with it the example's traffic is measured against it on every input and on the prediction, with
no schema, type or range violation for rows like the training ones."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import orjson
import pytest

from modeltap.cli import main
from tests.support.servers import serve

EXAMPLE_APP = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app.py"
PREDICT_PATH = "/v1/models/churn:predict"


def _load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLE_APP)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
def test_the_walkthrough_reference_matches_the_example(
    tmp_path: Path, clean_otel_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's commands, in its order.
    done = subprocess.run(
        [sys.executable, str(EXAMPLE_APP), "--write-training-data", "train.csv"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert main(["profile", str(tmp_path / "train.csv"), "-o", str(tmp_path / "reference.json"),
                 "--prediction", "prediction"]) == 0  # fmt: skip
    reference = orjson.loads((tmp_path / "reference.json").read_bytes())
    monkeypatch.setenv("MODELTAP_REFERENCE", str(tmp_path / "reference.json"))
    monkeypatch.delenv("MODEL_VERSION", raising=False)
    example = _load_example("modeltap_example_with_reference")

    # The profile describes the example's inputs, in the order of its rows, and its output.
    assert [(f["name"], f["role"], f["kind"]) for f in reference["features"]] == [
        *((name, "input", "numeric") for name in example.FEATURES),
        ("prediction", "output", "numeric"),
    ]
    # The README's row, then rows of the training table (fresh draws would fall outside its range
    # now and then, as real traffic does: counted as out_of_range).
    rows = [[0.1, 2, 3.5, 1], *example.training_rows()[:599]]
    with serve(example.app, "uvicorn-example-reference") as url, httpx.Client(base_url=url) as client:
        for start in range(0, len(rows), 50):
            response = client.post(PREDICT_PATH, json={"instances": rows[start : start + 50]})
            assert response.status_code == 200
        deadline = time.monotonic() + 30
        while True:
            status: dict[str, Any] = client.get("/modeltap/status").json()
            counts = {f["name"]: f["window_count"] for f in status["features"]}
            if counts and all(n == len(rows) for n in counts.values()):
                break
            assert time.monotonic() < deadline, counts
            time.sleep(0.2)

    assert status["reference"]["id"] == reference["id"]
    features = {(f["name"], f["role"]): f for f in status["features"]}
    assert set(features) == {*((name, "input") for name in example.FEATURES), ("prediction", "output")}
    assert all(f["monitored"] for f in features.values())
    assert all(f["psi"] is not None and f["psi"] < 0.1 for f in features.values()), features
    assert status["violations"] == {}
    assert status["history"]["psi"].keys() == {*example.FEATURES, "prediction"}
