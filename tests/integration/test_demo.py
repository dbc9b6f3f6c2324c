"""`modeltap demo` end to end in a short run: real uvicorn on 127.0.0.1, real traffic."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from modeltap.cli import main
from modeltap.demo.runner import ALERT_LEVELS, DemoOptions, run_demo
from modeltap.demo.traffic import PHASES


@pytest.mark.timeout(120)
def test_demo_flags_exactly_the_shifted_features(tmp_path: Path) -> None:
    """CLARIFICATIONS.md: the covariate-shift phase must flag exactly the shifted features."""
    out = io.StringIO()
    document = run_demo(DemoOptions(duration_s=6.0, rate_per_s=80, workdir=str(tmp_path)), out=out)
    shifted = {name for phase in PHASES for name in phase.shift}
    flagged = {f["name"] for f in document["features"] if f["level"] in ALERT_LEVELS}
    assert flagged == shifted
    reference_id = orjson.loads((tmp_path / "reference.json").read_bytes())["id"]
    assert document["reference"]["id"] == reference_id
    assert document["requests"]["total"] > 0
    assert document["violations"].get("decode_error", 0) >= 1  # the malformed requests were counted
    summary = out.getvalue().split("summary")[1]
    for name in shifted:
        assert f"{name}: first flagged" in summary


def test_cli_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--rate", "-1"])
    assert exit_info.value.code == 2
    assert "must be > 0" in capsys.readouterr().err
    assert main([]) == 2
