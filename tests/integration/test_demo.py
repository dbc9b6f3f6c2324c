"""`modeltap demo` end to end in a short run: real uvicorn on 127.0.0.1, real traffic."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from modeltap.cli import main
from modeltap.demo.runner import SHIFT_ALERT_SIGMA, DemoOptions, run_demo
from modeltap.demo.traffic import PHASES


@pytest.mark.timeout(120)
def test_demo_flags_exactly_the_shifted_features(tmp_path: Path) -> None:
    out = io.StringIO()
    document = run_demo(DemoOptions(duration_s=3.0, rate_per_s=80, workdir=str(tmp_path)), out=out)
    reference = {
        f["name"]: f
        for f in __import__("orjson").loads((tmp_path / "reference.json").read_bytes())["features"]
    }
    shifted = {name for phase in PHASES for name in phase.shift}
    moved = set()
    (model,) = document["models"]
    for feature in model["features"]:
        ref = reference.get(feature["name"])
        if ref is not None and abs(feature["mean"] - ref["mean"]) / ref["std"] > SHIFT_ALERT_SIGMA:
            moved.add(feature["name"])
    assert moved == shifted
    assert document["requests"]["total"] > 0
    assert document["violations"].get("decode_error", 0) >= 1  # the malformed requests were counted
    text = out.getvalue()
    assert "summary" in text
    for name in shifted:
        assert name in text.split("summary")[1]


def test_cli_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--rate", "-1"])
    assert exit_info.value.code == 2
    assert "must be > 0" in capsys.readouterr().err
    assert main([]) == 2
