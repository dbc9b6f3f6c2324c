"""The OpenTelemetry resource every modeltap signal carries."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource

SERVICE_INSTANCE_ID = "service.instance.id"


def new_instance_id() -> str:
    """A fresh id per process (a forked worker gets its own): labels each replica's series."""
    return str(uuid.uuid4())


def build_resource(
    instance_id: str,
    service_name: str | None,
    attributes: Mapping[str, str],
    base: Resource | None = None,
) -> Resource:
    """`base` (the application's own resource, when it has a provider) wins over defaults so
    modeltap's series join the app's; the process is always identified by instance id and pid."""
    extra: dict[str, str | int] = {**attributes, "process.pid": os.getpid()}
    if service_name:
        extra["service.name"] = service_name
    resource = Resource.create(extra)  # also reads OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME
    if base is not None:
        resource = resource.merge(base)
    if SERVICE_INSTANCE_ID not in resource.attributes:
        resource = resource.merge(Resource({SERVICE_INSTANCE_ID: instance_id}))
    return resource
