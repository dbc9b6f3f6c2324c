"""End-to-end tests against real backends (marker `backends`): an OpenTelemetry Collector and
Jaeger built from their Go modules, and Debian's Prometheus, all on loopback ports. Every
module here sets `pytestmark = pytest.mark.backends`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.backends import Backends, running_backends


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    with running_backends(tmp_path_factory.mktemp("backends")) as started:
        yield started
