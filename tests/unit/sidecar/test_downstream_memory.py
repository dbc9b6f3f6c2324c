"""The sidecar's client protocol leaves nothing for the garbage collector: each request's objects
(scope, uvicorn's cycle, the connection handle) are freed by reference counting as soon as the
next request replaces them. A reference cycle per request (the handle in the scope holding the
cycle that holds the scope) made the collector run about a hundred times a second under load."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from modeltap._types import Receive, Scope, Send
from modeltap.guarded.protocol import CONNECTION_EXTENSION, ClientLimits, ConnectionHandle, protocol_class
from tests.support.fake_transport import CLIENT_SOCKET, FakeTransport

BODY = b'{"instances": [[1.0, 2.0]]}'
REQUEST = (
    b"POST /predict HTTP/1.1\r\nHost: model\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


def test_requests_are_freed_by_reference_counting_not_the_collector() -> None:
    cycles: list[weakref.ref[Any]] = []  # uvicorn's per-request cycle objects
    seen_gone: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        handle: ConnectionHandle = scope["extensions"][CONNECTION_EXTENSION]
        seen_gone.append(handle.client_gone)
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def serve(requests: int) -> FakeTransport:
        config = uvicorn.Config(app, http="httptools", loop="none", lifespan="off", log_config=None)
        config.load()
        protocol = protocol_class(ClientLimits(), lambda code: None)(
            config=config, server_state=ServerState(), app_state={}
        )
        transport = FakeTransport(CLIENT_SOCKET)
        protocol.connection_made(transport)
        for _ in range(requests):
            protocol.data_received(REQUEST)
            cycles.append(weakref.ref(protocol.cycle))
            for _ in range(5):  # the request's task runs to its end
                await asyncio.sleep(0)
        return transport

    gc.collect()
    gc.disable()
    try:
        transport = asyncio.run(serve(50))
        # Every request was answered, and every request's objects but the last one's are gone
        # already, without a collection (the last are the protocol's current ones).
        assert sum(b"HTTP/1.1 200" in chunk for chunk in transport.written) == 50
        assert seen_gone == [False] * 50
        alive = [ref() is not None for ref in cycles]
        assert alive[:-1] == [False] * 49, alive
    finally:
        gc.enable()
