"""Shared pieces for tests that drive `ModelTapMiddleware` in process and read back what it recorded.

The `make_middleware` fixture built on `MakeMiddleware` lives in `tests/conftest.py`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from modeltap import ModelTapMiddleware
from tests.support.asgi_driver import ASGIApp, make_http_scope, run_asgi

START = "http.response.start"
BODY = "http.response.body"

# One `name="value"` pair inside the braces of a Prometheus text-format sample (value still escaped).
PROMETHEUS_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class MakeMiddleware(Protocol):
    def __call__(self, app: ASGIApp, **options: Any) -> ModelTapMiddleware: ...


def status_document(middleware: ModelTapMiddleware) -> dict[str, Any]:
    """Flush the tap, then GET `/modeltap/status` from loopback and decode the JSON document."""
    assert middleware.tap.flush(5.0)
    result = run_asgi(middleware, make_http_scope("GET", "/modeltap/status", headers=[]))
    assert result.status == 200, result.body
    document = json.loads(result.body)
    assert isinstance(document, dict)
    return document
