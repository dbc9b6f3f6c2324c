"""The compiled request path (see `_speedups.c`); optional, with pure-Python equivalents."""

from collections.abc import Awaitable, Callable
from typing import Any

class Capture:
    def __init__(
        self,
        app: Callable[..., Any],
        sink: Any,
        offer: Callable[[tuple[Any, ...], int], object],
        max_body_bytes: int,
        start_trace: Callable[[Any], Any] | None,
        attach: Callable[[Any], object],
        detach: Callable[[Any], object],
        cold_start_key: str,
        cold_start_requests: int = 0,
        encoder: Encoder | None = None,
        context_var: Any = None,
        sampler: Any = None,
        trace_ids: Callable[..., Any] | None = None,
        getrandbits: Callable[[int], int] | None = None,
        otel: tuple[Any, ...] | None = None,
    ) -> None: ...
    encoder: Encoder | None
    @property
    def made_here(self) -> tuple[bool, bool, bool]: ...
    def __call__(
        self, scope: Any, receive: Any, send: Any, weight: int, payload_weight: int, /
    ) -> Awaitable[None]: ...
    def root_trace(self, headers: list[tuple[bytes, bytes]], /) -> Any: ...
    def resume(
        self,
        scope: Any,
        receive: Any,
        send: Any,
        weight: int,
        payload_weight: int,
        ids: Any,
        start_ns: int,
        started: float,
        /,
    ) -> Awaitable[None]: ...
    def offer_whole(
        self,
        scope: Any,
        weight: int,
        payload_weight: int,
        ids: Any,
        start_ns: int,
        started: float,
        request_body: bytes,
        status: int,
        headers: list[tuple[bytes, bytes]],
        response_started: float | None,
        response_body: bytes,
        ended: float | None,
        /,
    ) -> None: ...

class Encoder:
    def __init__(
        self,
        request_headers: frozenset[bytes],
        response_headers: frozenset[bytes],
        route_of: Callable[[Any, str], str | None],
        route_key: str,
        template_key: str,
        proxy_error_key: str,
        cold_start_key: str,
    ) -> None: ...
    def encode(self, raw: tuple[Any, ...], /) -> bytes: ...

class Dispatch:
    def _set_shortcut(self, tap: Any, views_prefix: str | None, /) -> None: ...
    def __call__(self, scope: Any, receive: Any, send: Any, /) -> Awaitable[None]: ...

def compile_call(cls: type[Dispatch], /) -> None: ...

class Admission:
    stride: int
    payload_stride: int
    def __init__(self, max_stride: int, max_payload_stride: int) -> None: ...
    def admit(self) -> tuple[int, int]: ...

def compile_admit(cls: type, /) -> None: ...

class RecordQueue:
    def __init__(self, max_records: int, max_bytes: int, weight_of: Callable[[Any], int], /) -> None: ...
    max_records: int
    max_bytes: int
    worker_held_bytes: int
    drained_bytes: int
    dropped_full: int
    dropped_bytes: int
    dropped_unavailable: int
    unavailable: bool
    def offer(self, record: Any, kept_bytes: int, /) -> bool: ...
    def drain(self, limit: int, max_bytes: int | None = None) -> list[Any]: ...
    def oldest(self) -> Any: ...
    @property
    def depth(self) -> int: ...
    @property
    def pending_bytes(self) -> int: ...

def parse_request(
    data: bytes, max_url: int, max_headers: int, max_header_bytes: int, /
) -> tuple[str, str, bytes, bytes, list[tuple[bytes, bytes]], bytes] | None: ...
def response_head(
    status_line: bytes, default_fields: Any, fields: Any, keep_alive: bool, may_chunk: bool, /
) -> tuple[bytes, bool | None, int, bool] | None: ...
def parse_response(
    data: bytes, max_head: int, max_body: int, /
) -> tuple[int, list[tuple[bytes, bytes]], bool, bool, bytes] | None: ...
def decode_records(
    data: bytes, trace_ids: Any, route_key: str, proxy_error_key: str, cold_start_key: str, /
) -> list[Any]: ...
def decode_grouped(
    data: bytes, trace_ids: Any, route_key: str, proxy_error_key: str, cold_start_key: str, /
) -> tuple[list[Any], list[tuple[Any, list[float]]]]: ...
def request_head(
    headers: Any, peer: str | None, scheme: str, trusted: Any, default_host: bytes, via: bytes | None, /
) -> tuple[list[bytes], int | None, bool, bytes | None, int] | None: ...
