"""The route template a framework matched for a request (Starlette and FastAPI set
`scope["route"]`), with the mount paths routing appended to `root_path` in front of it."""

from __future__ import annotations

from typing import Any

from modeltap.records import ROUTE_TEMPLATE_KEY

# Route objects remembered with their templates; beyond this the cache is not grown.
CACHE_LIMIT = 4096


def route_template(scope: Any, route: object, root_path_at_start: str) -> str | None:
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return None
    after: str = scope.get("root_path", "")
    return after[len(root_path_at_start) :] + template if after.startswith(root_path_at_start) else template


class RouteTemplates:
    """Templates of a scope's framework route, memoised per route object (kept with the object,
    so a reused id misses). One thread uses an instance.

    Example::

        templates = RouteTemplates()
        templates.of(scope, root_path_at_start)   # "/v1/models/{model}:predict" or None
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[int, str, str], tuple[object, str | None]] = {}

    def of(self, scope: Any, root_path_at_start: str) -> str | None:
        route = scope.get("route")
        if route is None:
            # Already resolved elsewhere (a record that crossed to the monitor carries it).
            template: str | None = scope.get(ROUTE_TEMPLATE_KEY)
            return template
        root_path = scope.get("root_path", "")
        key = (id(route), root_path, root_path_at_start)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is route:
            return cached[1]
        template = route_template(scope, route, root_path_at_start)
        if len(self._cache) < CACHE_LIMIT:
            self._cache[key] = (route, template)
        return template
