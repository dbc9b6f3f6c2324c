"""The route template a framework matched for a request (Starlette and FastAPI set
`scope["route"]`), with the mount paths routing appended to `root_path` in front of it.

`root_path` holds the path the client sent, not the mounts' templates: a mount with parameters
(`Mount("/t/{tenant}")`) puts the client's text there. Each segment that is a parameter's value
is written back as its `{name}`; where a value is not a whole segment (part of one, several, or
converted: an upper-case UUID), the exchange gets no route rather than the client's text (a
route is a metric attribute). Parameters whose values are found outside the mounts' part (a
`Host` pattern's, in the Host header; a mount's above the middleware, in the `root_path` it
started with) are not the mounts'. A mount parameter hidden by a route parameter of the same
name cannot be told apart: its value stays (bounded, as every attribute, by the series limit).
"""

from __future__ import annotations

from typing import Any

from starlette.routing import Mount

from modeltap.records import ROUTE_TEMPLATE_KEY

# Route objects remembered with their templates; beyond this the cache is not grown.
CACHE_LIMIT = 4096


def route_template(scope: Any, route: object, root_path_at_start: str) -> str | None:
    template = included_template(scope, route)
    if template is None:
        template = getattr(route, "path", None)
    if not isinstance(template, str):
        return None
    return _under_mounts(scope, route, template, root_path_at_start)


def _under_mounts(scope: Any, route: object, template: str, root_path_at_start: str) -> str | None:
    """`template` with the part of `root_path` the mounts added during the request in front."""
    after: str = scope.get("root_path", "")
    if not after.startswith(root_path_at_start) or len(after) == len(root_path_at_start):
        return template
    mounted = _mount_template(after[len(root_path_at_start) :], scope, route, root_path_at_start)
    if mounted is None:
        return None
    # The route is the mount itself when nothing inside it matched (its 404 or 405) or its app is
    # not a router: its own path is already the end of `mounted`.
    return mounted if isinstance(route, Mount) else mounted + template


def included_template(scope: Any, route: object) -> str | None:
    """FastAPI's own template of a route it matched through `include_router`, prefix included.

    Recent FastAPI releases leave the router's route object in `scope["route"]`, whose path has
    no `include_router(prefix=...)`: two routers with the same paths under `/v1` and `/v2` would
    share a route. FastAPI keeps the route's whole template beside it (`scope["fastapi"]`, not a
    documented interface: read only when it is exactly as expected, else the route's own path).
    The compiled encoder reads it the same way.
    """
    try:
        fastapi = scope.get("fastapi")
        if type(fastapi) is not dict:
            return None
        context = fastapi.get("effective_route_context")
        if context is None or getattr(context, "original_route", None) is not route:
            return None
        path = getattr(context, "path", None)
    except Exception:
        return None  # not as expected: the route's own path
    return path if type(path) is str and path.startswith("/") else None


def _mount_template(mounted: str, scope: Any, route: object, root_path_at_start: str) -> str | None:
    """The mounts' part of the route, their parameters' values written back as `{name}`."""
    params = scope.get("path_params")
    if not isinstance(params, dict) or not params:
        return mounted  # mounts without parameters: their text is their template
    own = () if isinstance(route, Mount) else getattr(route, "param_convertors", None) or ()
    outside = None
    unplaced = []
    for name, value in params.items():
        text = str(value)
        if name in own or not text:
            continue
        if text not in mounted:
            outside = _outside(scope, root_path_at_start) if outside is None else outside
            if text in outside:
                continue  # a Host pattern's or an outer mount's parameter, not these mounts'
        unplaced.append((name, text))
    if not unplaced:
        return mounted
    # From the end: the innermost mount's parameters are last, and a mount's parameter usually
    # ends its prefix (`/t/{tenant}` for `/t/t` is `/t/{tenant}`, not `/{tenant}/t`).
    segments = mounted.split("/")
    unplaced.reverse()
    for index in range(len(segments) - 1, -1, -1):
        for position, (name, value) in enumerate(unplaced):
            if segments[index] == value:
                segments[index] = "{" + str(name) + "}"
                del unplaced[position]
                break
    return None if unplaced else "/".join(segments)


def _outside(scope: Any, root_path_at_start: str) -> str:
    """Where parameters that are not the mounts' come from: the Host header and the root path
    the middleware started with."""
    host = ""
    for key, value in scope.get("headers", ()):
        if key == b"host":
            host = value.decode("latin-1")
            break
    return f"{host} {root_path_at_start}"


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
        included = included_template(scope, route)
        if included is not None:
            # Not memoised: one router's route object may be included under several prefixes.
            return _under_mounts(scope, route, included, root_path_at_start)
        key = (id(route), root_path, root_path_at_start)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is route:
            return cached[1]
        template = route_template(scope, route, root_path_at_start)
        if len(self._cache) < CACHE_LIMIT:
            self._cache[key] = (route, template)
        return template
