"""Route templates of the inference protocols, for paths no framework route describes.

The sidecar sees raw paths only, and a raw path is the client's to choose: as a span name or a
metric attribute it would make one series per URL. A path that matches one of the protocols'
documented routes (PROTOCOLS.md) gets that route's template, e.g. `/v2/models/{model}/infer`;
any other path gets none. The templates are a fixed set, so they are safe attribute values.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple


class Route(NamedTuple):
    template: str
    # An inference call: a POST here carries a payload, so an empty or `null` body is an error.
    needs_body: bool


_SEGMENT = r"[^/]+"
_V1_SEGMENT = r"[^/:]+"
# (pattern over the whole path without a trailing slash, template, inference call). A group named
# `verb` is copied into the template; its alternatives are a fixed list, so the set stays finite.
_ROUTES: tuple[tuple[re.Pattern[str], str, bool], ...] = tuple(
    (re.compile(pattern), template, needs_body)
    for pattern, template, needs_body in (
        # Open Inference Protocol V2 (KServe V2, MLServer, Triton).
        (
            rf"/v2/models/{_SEGMENT}/versions/{_SEGMENT}/(?P<verb>infer|infer_stream|generate|generate_stream)",
            "/v2/models/{model}/versions/{version}/{verb}",
            True,
        ),
        (
            rf"/v2/models/{_SEGMENT}/(?P<verb>infer|infer_stream|generate|generate_stream)",
            "/v2/models/{model}/{verb}",
            True,
        ),
        (
            rf"/v2/models/{_SEGMENT}/versions/{_SEGMENT}/ready",
            "/v2/models/{model}/versions/{version}/ready",
            False,
        ),
        (rf"/v2/models/{_SEGMENT}/ready", "/v2/models/{model}/ready", False),
        (rf"/v2/models/{_SEGMENT}/versions/{_SEGMENT}", "/v2/models/{model}/versions/{version}", False),
        (rf"/v2/models/{_SEGMENT}", "/v2/models/{model}", False),
        (r"/v2/health/(?P<verb>live|ready)", "/v2/health/{verb}", False),
        (r"/v2", "/v2", False),
        # KServe V1 and TF Serving.
        (
            rf"/v1/models/{_V1_SEGMENT}/versions/{_V1_SEGMENT}:(?P<verb>predict|classify|regress)",
            "/v1/models/{model}/versions/{version}:{verb}",
            True,
        ),
        (
            rf"/v1/models/{_V1_SEGMENT}/labels/{_V1_SEGMENT}:(?P<verb>predict|classify|regress)",
            "/v1/models/{model}/labels/{label}:{verb}",
            True,
        ),
        (
            rf"/v1/models/{_V1_SEGMENT}:(?P<verb>predict|explain|classify|regress)",
            "/v1/models/{model}:{verb}",
            True,
        ),
        (rf"/v1/models/{_V1_SEGMENT}/versions/{_V1_SEGMENT}", "/v1/models/{model}/versions/{version}", False),
        (rf"/v1/models/{_V1_SEGMENT}/metadata", "/v1/models/{model}/metadata", False),
        (rf"/v1/models/{_V1_SEGMENT}", "/v1/models/{model}", False),
        # OpenAI-style APIs, also under KServe's `/openai` prefix.
        (
            r"(?P<verb>(?:/openai)?/v1/(?:chat/completions|completions|embeddings|responses))",
            "{verb}",
            True,
        ),
        (r"(?P<verb>(?:/openai)?/v1/models)", "{verb}", False),
        # Seldon Core v1, direct or through its ingress path.
        (r"/api/v1\.0/(?P<verb>predictions|feedback)", "/api/v1.0/{verb}", True),
        (
            rf"/seldon/{_SEGMENT}/{_SEGMENT}/api/v1\.0/(?P<verb>predictions|feedback)",
            "/seldon/{namespace}/{deployment}/api/v1.0/{verb}",
            True,
        ),
    )
)
# Longer paths than this are not any protocol's route (and are not worth matching).
_MAX_PATH_CHARS = 1024


@functools.lru_cache(maxsize=4096)
def protocol_route(path: str) -> Route | None:
    """The protocol route a path belongs to, or None.

    >>> protocol_route("/v2/models/churn/infer")
    Route(template='/v2/models/{model}/infer', needs_body=True)
    >>> protocol_route("/v2/models/churn/versions/3") is not None, protocol_route("/admin/x")
    (True, None)
    """
    if len(path) > _MAX_PATH_CHARS:
        return None
    trimmed = path[:-1] if len(path) > 1 and path.endswith("/") else path
    for pattern, template, needs_body in _ROUTES:
        match = pattern.fullmatch(trimmed)
        if match is not None:
            verb = match.groupdict().get("verb")
            return Route(template.replace("{verb}", verb) if verb else template, needs_body)
    return None
