"""A smoke test of `modeltap._speedups` alone, for interpreters modeltap's dependencies are not
installed in: `python speedups_smoke.py DIRECTORY` imports the extension built into DIRECTORY and
runs exchanges through it (answered, failed, encoded, traced; through the compiled middleware
call, with its Python subclass keeping a coroutine `__call__`; records through the compiled
queue), then checks that none leaked. Prints `ok` and exits 0, or raises."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import importlib
import random
import sys
from typing import Any

sys.path.insert(0, sys.argv[1])
_speedups: Any = importlib.import_module("_speedups")  # the extension built into argv[1]

records: list[Any] = []
errors: list[str] = []


class Sink:
    def note_internal_error(self, where: str) -> None:
        errors.append(where)

    def note_first_answer(self, unix_ns: int) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    message = await receive()
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"text/plain")]})
    await asyncio.sleep(0)
    await send({"type": "http.response.body", "body": message["body"][::-1]})


async def failing(scope: Any, receive: Any, send: Any) -> None:
    raise ValueError("model failed")


class Sampler:
    _bound = 1 << 64  # every new trace is kept


context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("context")
context.set({})  # OpenTelemetry's empty context: new root traces are decided in C
encoder = _speedups.Encoder(
    frozenset({b"content-type"}), frozenset({b"content-type"}), lambda s, r: None, "route", "t", "p", "cold"
)


def keep(record: Any, kept_bytes: int) -> None:
    records.append(record)


traced = _speedups.Capture(
    app, Sink(), keep, 1024, lambda h: None, lambda ids: None, lambda t: None, "cold", 1, None,
    context, Sampler(), lambda *fields: tuple(fields), random.getrandbits,
)  # fmt: skip
encoded = _speedups.Capture(app, Sink(), keep, 1024, None, None, None, "cold", 0, encoder)
broken = _speedups.Capture(failing, Sink(), keep, 1024, None, None, None, "cold", 0)
SCOPE = {
    "type": "http", "method": "POST", "path": "/p", "query_string": b"", "client": ("10.0.0.1", 5),
    "server": ("h", 80), "headers": [(b"content-type", b"application/json")],
}  # fmt: skip


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"hello", "more_body": False}


async def send(message: Any) -> None:
    await asyncio.sleep(0)


async def exchanges() -> None:
    await traced(dict(SCOPE), receive, send, 1, 1)
    await encoded(dict(SCOPE), receive, send, 1, 1)
    try:
        await broken(dict(SCOPE), receive, send, 1, 1)
    except ValueError:
        pass
    else:
        raise AssertionError("the app's exception did not propagate")


asyncio.run(exchanges())
answered, as_bytes, failed = records
assert (answered[7], answered[9], answered[11]) == (201, [b"hello"], [b"olleh"]), answered
assert answered[0]["cold"] is True, answered
assert answered[15][0] > 0, answered  # a new root trace, kept (the bound takes all)
assert answered[15][4] is True, answered
assert isinstance(as_bytes, bytes), as_bytes
assert as_bytes.endswith(b"helloolleh"), as_bytes
assert (failed[13], failed[7]) == ("ValueError", 0), failed
raw: tuple[Any, ...] = (dict(SCOPE), "", 1, 0.0, 0.1, 0.2, 0.3, 200, [], [b"a"], 1, [b"b"], 1, None, False,
       (1 << 100, 5, 0, False, True, "k=v", False), 1, 1, None)  # fmt: skip
assert encoder.encode(raw).endswith(b"ab")
assert errors == [], errors


# The middleware's call: a Python subclass of Dispatch keeps a coroutine `__call__` (what servers
# look at) while `compile_call` points its call slot at C.
class Sampling:
    stride = 1
    payload_stride = 1

    def admit(self) -> tuple[int, int]:
        return 1, 1


class Tap:
    capture = encoded
    sampling = Sampling()


class Middleware(_speedups.Dispatch):  # type: ignore[misc]
    def __init__(self) -> None:
        self.app = app
        self.python_calls = 0
        self._set_shortcut(Tap(), "/modeltap")

    async def _dispatch(self, scope: Any, receive: Any, send: Any) -> None:
        self.python_calls += 1
        await self.app(scope, receive, send)

    __call__ = _dispatch


_speedups.compile_call(Middleware)
middleware = Middleware()
assert asyncio.iscoroutinefunction(middleware.__call__)


async def through_middleware() -> None:
    await middleware(dict(SCOPE), receive, send)  # captured, no Python call
    await middleware({**SCOPE, "path": "/modeltap/status"}, receive, send)  # the views: Python


records.clear()
asyncio.run(through_middleware())
assert middleware.python_calls == 1, middleware.python_calls
assert len(records) == 1, records
assert isinstance(records[0], bytes), records

# The queue: bounded in records and bytes, drops counted by weight, drained oldest first.
queue = _speedups.RecordQueue(3, 1 << 20, lambda record: 2)
assert all(queue.offer((index,), 10) for index in range(3))
assert queue.offer((3,), 10) is False
assert queue.dropped_full == 2
queue.unavailable = True
assert queue.offer((4,), 10) is False
assert queue.dropped_unavailable == 2
assert queue.drain(2) == [(0,), (1,)]
assert queue.drained_bytes == 2 * (10 + 1024)
assert queue.depth == 1
assert queue.oldest() == (2,)
assert queue.drain(10, 0) == []
assert queue.drain(10) == [(2,)]
assert queue.pending_bytes == 0

gc.collect()
before = len(gc.get_objects())
for _ in range(300):
    records.clear()
    asyncio.run(exchanges())
    asyncio.run(through_middleware())
    for index in range(5):
        queue.offer((index,), 1)
    queue.drain(10)
records.clear()
gc.collect()
assert len(gc.get_objects()) - before < 100, len(gc.get_objects()) - before
print("ok")
