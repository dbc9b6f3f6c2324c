"""README "View it in Prometheus, Grafana and Jaeger": its commands run as written, on the real
Collector, Prometheus and Jaeger, on the ports the README names (skipped when they are taken)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_readme import BLOCKS, _base_env, _BlockRunner, _port_free, _scratch
from tests.support.backends import require_tools

pytestmark = [pytest.mark.backends, pytest.mark.timeout(1500)]

OWNER = "tests/backends/test_readme_section.py"


def test_the_readme_walkthrough_runs_on_the_real_backends(tmp_path: Path) -> None:
    require_tools()
    blocks = [b for b in BLOCKS if b.skip_reason is not None and OWNER in b.skip_reason]
    assert len(blocks) == 1
    ports = (8080, 14090, 14317, 14318, 14417, 14418, 14685, 14686, 14889)
    busy = [port for port in ports if not _port_free(port)]
    if busy:
        pytest.skip(f"ports {busy}, which the README's commands use, are in use on this machine")
    runner = _BlockRunner(_scratch(tmp_path), _base_env(tmp_path))
    try:
        runner.run(blocks[0])
    finally:
        # The block ends with `scripts/backends.sh down`; after a failure, stop them anyway.
        runner._shell("scripts/backends.sh down", runner.base_env, 60)
