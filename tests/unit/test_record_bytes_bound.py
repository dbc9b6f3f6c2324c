"""The hand-off's byte bound holds for what a record really holds, the client's head included.

A queued record is charged its kept body bytes plus `RECORD_OVERHEAD_BYTES`. The client also
chooses the request's head (path, query, headers, `tracestate`), which uvicorn takes at 60 KB of
query and 60 KB of headers: a record holds it too, so a head over the overhead is charged.

* A raw record (a tuple: inline mode, and the pure-Python capture in process mode) holds the whole
  scope: charged `kept + max(0, head - overhead)`, head = path, raw path, query string, request
  header names and values, and the trace state.
* An encoded record (the compiled capture in process mode) is charged its own length when that
  is over `kept + overhead` (the kept bodies are inside it).
* An ordinary exchange, whose head is under the overhead, is charged `kept + overhead` as before.

Counts are exact: the records queued and those dropped for bytes follow from the real sizes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modeltap.capture import compiled
from modeltap.capture.exchange import TraceStarter, exchange_capture
from modeltap.capture.record_queue import RECORD_OVERHEAD_BYTES, RecordQueue, new_record_queue
from modeltap.capture.trace_context import TraceSampler, parse_tracestate
from modeltap.config import SamplerConfig
from modeltap.handoff.framing import compiled_encoder
from tests.support.asgi_driver import http_request_messages, make_http_scope, run_asgi
from tests.support.tapping import BODY, START, MakeMiddleware, status_document

CAP = 1 << 20
REQUEST_BODY = b'{"instances": [[1.0, 2.0], [3.0, 4.0]]}'
RESPONSE_BODY = b'{"predictions": [3.0, 7.0]}'
KEPT = len(REQUEST_BODY) + len(RESPONSE_BODY)
PATH = "/v1/models/m:predict"
# What the monitor reads of the request (the tap's own choice, in part): a long `user-agent` is
# held by the encoded record too.
WANTED_REQUEST = {b"content-type", b"content-encoding", b"user-agent", b"x-request-id", b"traceparent"}
WANTED_RESPONSE = {b"content-type", b"content-encoding"}
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
# A well-formed state (20 members of 200 characters) the trace keeps: the raw record holds it.
TRACESTATE = b",".join(b"k%02d=" % i + b"v" * 200 for i in range(20))
# 60 KB of query and 60 KB of headers (30 unwanted ones and a 20 KB wanted one).
HOSTILE_QUERY = b"q=" + b"x" * 59_998
HOSTILE_HEADERS = [(b"x-pad-%02d" % i, b"v" * 1_332) for i in range(30)] + [(b"user-agent", b"u" * 20_000)]
ORDINARY_HEADERS = [(b"content-type", b"application/json"), (b"user-agent", b"python-httpx/0.27")]


def scope_with(
    query: bytes, headers: list[tuple[bytes, bytes]], state: bytes | None = None
) -> dict[str, Any]:
    """A request's scope; with `state`, a sampled `traceparent` and that `tracestate`."""
    extra = [] if state is None else [(b"traceparent", TRACEPARENT), (b"tracestate", state)]
    return make_http_scope("POST", PATH, headers=[*headers, *extra], query_string=query)


def head_size(scope: dict[str, Any], state: bytes | None = None) -> int:
    """The head a raw record holds, counted from the scope's fields as the server made them, and
    the trace state the trace keeps of `state`."""
    size = len(scope["path"]) + len(scope["raw_path"]) + len(scope["query_string"])
    size += sum(len(name) + len(value) for name, value in scope["headers"])
    return size + (len(parse_tracestate(state)) if state is not None else 0)


class Sink:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def note_internal_error(self, where: str) -> None:
        self.errors.append(where)

    def note_first_answer(self, unix_ns: int) -> None:
        pass


class Client:
    """The request body in one message, then `http.disconnect`."""

    def __init__(self) -> None:
        self.messages = [{"type": "http.request", "body": REQUEST_BODY, "more_body": False}]

    async def receive(self) -> dict[str, Any]:
        return self.messages.pop(0) if self.messages else {"type": "http.disconnect"}


async def ignore(message: Any) -> None:
    pass


async def predict(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": RESPONSE_BODY})


def offer_through_capture(
    queue: RecordQueue, mode: str, scopes: list[dict[str, Any]], traced: bool = False
) -> tuple[list[Any], Sink]:
    """Each scope's exchange through the real capture (the form `each_capture_form` picked), into
    `queue`; returns the records offered (queued or not). Process mode: the compiled capture
    encodes each record, as the tap has it do; the pure-Python one offers raw records."""
    offered: list[Any] = []

    def offer(record: Any, kept: int) -> bool:
        offered.append(record)
        return queue.offer(record, kept)

    name = "parentbased_traceidratio" if traced else "always_off"
    sink = Sink()
    capture = exchange_capture(
        predict,
        sink,
        offer,
        CAP,
        TraceStarter(TraceSampler(SamplerConfig(name, 1.0)), {}),
        encoder=compiled_encoder(WANTED_REQUEST, WANTED_RESPONSE) if mode == "process" else None,
    )

    async def main() -> None:
        for scope in scopes:
            await capture(scope, Client().receive, ignore, 1, 1)

    asyncio.run(main())
    assert len(offered) == len(scopes)
    return offered, sink


def expected_charge(record: Any, head: int) -> int:
    """What the queue is charged for `record`, from its real size."""
    if isinstance(record, bytes):
        return max(KEPT, len(record) - RECORD_OVERHEAD_BYTES) + RECORD_OVERHEAD_BYTES
    return KEPT + max(0, head - RECORD_OVERHEAD_BYTES) + RECORD_OVERHEAD_BYTES


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("mode", ["inline", "process"])
def test_hostile_heads_are_charged_what_the_records_hold(
    each_capture_form: str, mode: str, traced: bool
) -> None:
    sent = 9
    state = TRACESTATE if traced else None
    scopes = [scope_with(HOSTILE_QUERY, HOSTILE_HEADERS, state) for _ in range(sent)]
    head = head_size(scopes[0], state)
    assert head > 120_000
    max_bytes = 400_000
    queue = new_record_queue(max_records=10_000, max_bytes=max_bytes)

    offered, sink = offer_through_capture(queue, mode, scopes, traced)

    assert sink.errors == []
    encoded = mode == "process" and each_capture_form == "compiled"
    assert all(isinstance(record, bytes) == encoded for record in offered)
    if traced and not encoded:
        assert all(record[15].trace_state == parse_tracestate(TRACESTATE) != "" for record in offered)
    charge = expected_charge(offered[0], head)
    assert all(expected_charge(record, head) == charge for record in offered)
    # The 60 KB query and the 20 KB wanted header are in the encoded record; the unwanted
    # headers are not, and are not charged.
    assert charge > 80_000
    fits = max_bytes // charge
    assert 0 < fits < sent
    assert queue.depth == fits
    assert queue.pending_bytes == fits * charge
    assert queue.dropped_bytes == sent - fits
    assert queue.dropped_full == 0
    assert len(queue.drain(100)) == fits


@pytest.mark.parametrize("mode", ["inline", "process"])
def test_an_ordinary_exchange_is_charged_its_kept_bodies_and_the_overhead(
    each_capture_form: str, mode: str
) -> None:
    queue = new_record_queue(max_records=10_000, max_bytes=64 << 20)
    scopes = [scope_with(b"a=1", ORDINARY_HEADERS), scope_with(b"a=1", ORDINARY_HEADERS, b"vendor=opaque")]

    offer_through_capture(queue, mode, scopes[:1])
    offer_through_capture(queue, mode, scopes[1:], traced=True)

    assert queue.depth == 2
    assert queue.pending_bytes == 2 * (KEPT + RECORD_OVERHEAD_BYTES)


@pytest.mark.parametrize("over", [0, 1, 700])
def test_a_raw_records_head_is_charged_only_beyond_the_overhead(each_capture_form: str, over: int) -> None:
    """The head at the overhead exactly is covered by it; each byte beyond is charged."""
    base = scope_with(b"", ORDINARY_HEADERS)
    scope = scope_with(b"q" * (RECORD_OVERHEAD_BYTES + over - head_size(base)), ORDINARY_HEADERS)
    assert head_size(scope) == RECORD_OVERHEAD_BYTES + over
    queue = new_record_queue(max_records=10_000, max_bytes=64 << 20)

    offer_through_capture(queue, "inline", [scope])

    assert queue.pending_bytes == KEPT + RECORD_OVERHEAD_BYTES + over


@pytest.mark.parametrize(("char", "width"), [("\u00e9", 2), ("\u20ac", 3), ("\U0001f600", 4)])
def test_a_non_ascii_path_is_charged_by_the_bytes_it_may_take(
    each_capture_form: str, char: str, width: int
) -> None:
    """A str path is charged 2, 3 or 4 bytes a character as its widest character is stored in 1,
    2 or 4 bytes: at least its UTF-8 and its memory, not its length (a quarter of it, for
    four-byte characters)."""
    base = scope_with(b"", ORDINARY_HEADERS)
    path = "/m/" + char * 3000
    scope = {**base, "path": path}
    head = head_size(base) - len(base["path"]) + width * len(path)
    assert width * len(path) >= len(path.encode("utf-8")) > len(path)
    queue = new_record_queue(max_records=10, max_bytes=64 << 20)

    offer_through_capture(queue, "inline", [scope])

    assert queue.pending_bytes == KEPT + head


def test_both_forms_charge_a_raw_record_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """Odd heads too: no raw path, a str subclass as the path, headers as lists, a tuple of them."""
    if not compiled.AVAILABLE:
        pytest.skip("modeltap._speedups is not built here")

    class Path(str):
        pass

    odd = [
        {**scope_with(HOSTILE_QUERY, HOSTILE_HEADERS), "raw_path": None},
        {**scope_with(b"", HOSTILE_HEADERS), "path": Path("/" + "p" * 5000)},
        {**scope_with(b"", []), "headers": [[b"x-a", b"b" * 3000], [b"x-c", b"d" * 10]]},
        {**scope_with(b"", []), "headers": tuple(HOSTILE_HEADERS)},
        {**scope_with(b"", []), "path": "/caf\u00e9/\u20ac" + "\U0001f600" * 500},
        {**scope_with(b"", []), "path": Path("/" + "\u00e9" * 1000)},
    ]
    # A header that is not a (name, value) pair: the head is not measured, the record still offered.
    unmeasured = {**scope_with(HOSTILE_QUERY, []), "headers": [(b"x-a", b"b" * 3000, b"c")]}
    charged: dict[str, list[int]] = {}
    for form in ("python", "compiled"):
        monkeypatch.setattr(compiled, "wanted", lambda form=form: form == "compiled")
        charged[form] = []
        for scope in [*odd, unmeasured]:
            queue = new_record_queue(max_records=10, max_bytes=64 << 20)
            offer_through_capture(queue, "inline", [dict(scope)])
            charged[form].append(queue.pending_bytes)
    assert charged["compiled"] == charged["python"]
    assert all(size > KEPT + RECORD_OVERHEAD_BYTES for size in charged["python"][:-1])
    assert charged["python"][-1] == KEPT + RECORD_OVERHEAD_BYTES


def test_offer_whole_charges_the_head_as_the_capture_does() -> None:
    """The sidecar's direct path (`Capture.offer_whole`) offers through the same finish."""
    if not compiled.AVAILABLE:
        pytest.skip("modeltap._speedups is not built here")
    charges: list[int] = []
    capture: Any = exchange_capture(
        predict,
        Sink(),
        lambda record, kept: charges.append(kept),
        CAP,
        TraceStarter(TraceSampler(SamplerConfig("always_off", 0.0)), {}),
        compiled=True,
    )
    scope = scope_with(HOSTILE_QUERY, HOSTILE_HEADERS)
    headers = [(b"content-type", b"application/json")]
    capture.offer_whole(scope, 1, 1, None, 0, 0.0, REQUEST_BODY, 200, headers, 1.0, RESPONSE_BODY, 2.0)
    assert charges == [KEPT + head_size(scope) - RECORD_OVERHEAD_BYTES]


@pytest.mark.timeout(30)
def test_the_middleware_drops_records_of_hostile_heads_for_bytes(
    each_capture_form: str, make_middleware: MakeMiddleware
) -> None:
    """Inline, a 64 KiB hand-off: each ordinary record fits, no record of a 120 KB head does."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": START, "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": BODY, "body": RESPONSE_BODY})

    middleware = make_middleware(
        app, queue_max_bytes=64 << 10, worker_interval_s=10.0, snapshot_interval_s=10.0
    )
    pattern = (False, True, False, True, True, False)
    for hostile in pattern:
        scope = scope_with(HOSTILE_QUERY, HOSTILE_HEADERS) if hostile else scope_with(b"", ORDINARY_HEADERS)
        assert run_asgi(middleware, scope, http_request_messages(REQUEST_BODY)).status == 200

    document = status_document(middleware)
    assert document["dropped"]["queue_bytes"] == sum(pattern)
    assert document["requests"]["total"] == len(pattern) - sum(pattern)
