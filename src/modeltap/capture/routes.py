"""The route template a framework matched for a request (Starlette and FastAPI set
`scope["route"]`), with the mount paths routing appended to `root_path` in front of it.

`root_path` holds the path the client sent, not the mounts' templates: a mount with parameters
(`Mount("/t/{tenant}")`) puts the client's text there. The mounts' own templates are found in
the router Starlette notes in `scope["router"]`: the first chain of mounts (in routing order)
from it to the matched route whose patterns consume exactly the part of `root_path` the mounts
added is the one routing took, and their paths, as written, are the route's front. Where no
such chain is found (another framework's router, an app the walk cannot see into), each segment
that is a parameter's value is written back as its `{name}`; where a value is not a whole
segment (part of one, several, or converted: an upper-case UUID), or a route parameter of the
same name hides it, the exchange gets no route rather than the client's text (a route is a
metric attribute). Parameters whose values are found outside the mounts' part (a `Host`
pattern's, in the Host header; a mount's above the middleware, in the `root_path` it started
with) are not the mounts'.
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
    """The mounts' part of the route: their templates where the router shows them, else their
    parameters' values written back as `{name}`."""
    params = scope.get("path_params")
    if not isinstance(params, dict) or not params:
        return mounted  # mounts without parameters: their text is their template
    found = _chain_template(scope.get("router"), route, mounted, bool(root_path_at_start))
    if found is not None:
        return found
    own = () if isinstance(route, Mount) else getattr(route, "param_convertors", None) or ()
    outside = None
    unplaced = []
    for name, value in params.items():
        text = str(value)
        if not text:
            continue
        if name in own:
            # A mount parameter of the same name would be hidden here, its value left in
            # `mounted` as the client sent it: with no router to tell, no route at all.
            return None
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


# Per router (the one Starlette notes in the scope: one per app, as a rule), the mount chains of
# every route under it, from one walk of at most WALK_LIMIT routes; at most this many routers.
ROUTER_CACHE_LIMIT = 16
WALK_LIMIT = 10_000
CHAINS_PER_ROUTE = 8  # a route object mounted in more places than this: the first ones
Chains = list[tuple[Mount, ...]]
_indexes: dict[int, tuple[object, dict[int, tuple[object, Chains]]]] = {}


def _chain_template(router: object, route: object, mounted: str, below: bool) -> str | None:
    """The paths of the first chain of mounts from `router` to `route` (in routing order) that
    consumes `mounted` exactly, joined; None when there is none. With `below` (something was
    mounted above the middleware), a chain may start below the router: the mounts above the
    middleware are in the `root_path` it started with, not in `mounted`."""
    if router is None or not hasattr(router, "routes"):
        return None
    entry = _index_of(router).get(id(route))
    if entry is None or entry[0] is not route:
        return None
    for chain in entry[1]:
        for start in range(len(chain)) if below else (0,):
            if _consumes(chain[start:], mounted):
                return "".join(mount.path for mount in chain[start:])
    return None


def _index_of(router: object) -> dict[int, tuple[object, Chains]]:
    cached = _indexes.get(id(router))
    if cached is not None and cached[0] is router:
        return cached[1]
    index = _mount_chains(router)
    if len(_indexes) >= ROUTER_CACHE_LIMIT:
        _indexes.pop(next(iter(_indexes)))  # the oldest: routers made and dropped at run time
    _indexes[id(router)] = (router, index)
    return index


def _mount_chains(router: object) -> dict[int, tuple[object, Chains]]:
    """For every route under `router` (by id, with the object), the chains of mounts leading to
    it in routing order (a mount's own chain ends with it); bounded by WALK_LIMIT routes."""
    index: dict[int, tuple[object, Chains]] = {}
    budget = WALK_LIMIT
    entered: set[int] = set()

    def walk(routes: Any, chain: tuple[Mount, ...]) -> None:
        nonlocal budget
        try:
            listed = list(routes)
        except Exception:
            return
        for node in listed:
            budget -= 1
            if budget < 0:
                return
            # A mount adds its path to root_path; a Host pattern, an included router (FastAPI
            # keeps its prefix in the route's own template) or a router add nothing.
            here = (*chain, node) if isinstance(node, Mount) else chain
            entry = index.setdefault(id(node), (node, []))
            if entry[0] is node and len(entry[1]) < CHAINS_PER_ROUTE:
                entry[1].append(here)
            inner = _inner_routes(node)
            if inner is not None and id(node) not in entered:
                entered.add(id(node))
                walk(inner, here)
                entered.discard(id(node))

    walk(_inner_routes(router) or (), ())
    return index


def _inner_routes(node: object) -> Any:
    """The routes under a router, a mount, a host or an included router: its `routes`, else those
    of the app it wraps (`app`, or the one callable with routes that a wrapper keeps), through
    middleware layers; None when none is found (an endpoint's route, a closure)."""
    for _ in range(8):
        try:
            routes = getattr(node, "routes", None)
            if routes:
                return routes
            inner = getattr(node, "app", None)
            node = inner if inner is not None else _wrapped(node)
        except Exception:
            return None
        if node is None:
            return None
    return None


def _wrapped(node: object) -> object | None:
    """What an ASGI wrapper keeping its app under another name wraps: the one value of its
    instance dict that is itself a router or an app (it has `routes` or `app`)."""
    try:
        values = list(vars(node).values())
    except TypeError:
        return None
    found = [v for v in values if callable(v) and (hasattr(v, "routes") or hasattr(v, "app"))]
    return found[0] if len(found) == 1 else None


def _consumes(chain: tuple[Mount, ...], mounted: str) -> bool:
    """Whether these mounts, one inside the other, match all of `mounted` and nothing more, as
    routing matched them (each mount's pattern is its path followed by `/{path:path}`)."""
    rest = mounted + "/"
    for mount in chain:
        pattern = getattr(mount, "path_regex", None)
        if pattern is None:
            return False
        match = pattern.match(rest)
        if match is None:
            return False
        rest = "/" + match.groupdict().get("path", "")
    return rest == "/"


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
