"""examples/backends/: the Prometheus configuration loads in promtool with generated rules, and
scrapes the port the Collector configuration exports on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from modeltap.cli import main as modeltap_main
from modeltap.reference import build_profile
from modeltap.reference.document import write_profile
from tests.support.backends import require_promtool

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "backends"


def test_prometheus_scrapes_the_collectors_exporter_with_the_replicas_labels() -> None:
    prometheus = yaml.safe_load((EXAMPLES / "prometheus.yml").read_text())
    collector = (EXAMPLES / "otelcol.yaml").read_text()
    exporter = re.search(r"\$\{env:MODELTAP_COLLECTOR_PROMETHEUS:-([^}]+)\}", collector)
    assert exporter is not None
    [job] = prometheus["scrape_configs"]
    assert job["honor_labels"] is True
    assert job["static_configs"] == [{"targets": [exporter[1]]}]
    assert prometheus["rule_files"] == ["rules.yml"]


def test_promtool_accepts_the_configuration_with_generated_rules(tmp_path: Path) -> None:
    promtool = require_promtool()
    shutil.copy(EXAMPLES / "prometheus.yml", tmp_path / "prometheus.yml")
    write_profile(build_profile({"x": [float(i % 50) for i in range(300)]}), tmp_path / "reference.json")
    argv = ["rules", "--reference", str(tmp_path / "reference.json"), "-o", str(tmp_path / "rules.yml")]
    assert modeltap_main(argv) == 0
    checked = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
    assert "rules.yml" in checked.stdout + checked.stderr
