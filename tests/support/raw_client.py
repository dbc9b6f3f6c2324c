"""A raw-socket HTTP/1.1 client for malformed and oddly delivered requests.

httpx (through h11) refuses to *send* malformed requests, so protocol-input tests write bytes
straight onto a socket: all at once, byte by byte, or slowly with a delay between pieces. The
answer is read until the server closes the connection, a number of responses is complete, or a
timeout passes, and is split into responses (several when requests were pipelined): status line,
headers (names lower-cased, order kept, `x-modeltap-error` among them) and body, framed by
Content-Length, chunked coding or the connection's end. Whether the server closed (or reset) the
connection is reported too.

Typical use::

    with RawClient(sidecar.port) as client:
        client.send(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        answer = client.read(responses=1)
    assert answer.responses[0].status == 200

or, for one request on a fresh connection, `exchange(port, data)`.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field
from typing import Literal

SendMode = Literal["all", "bytewise"]


@dataclass
class RawResponse:
    """One response as it came off the wire (headers lower-cased, in order)."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool  # False: the connection ended (or the read timed out) inside this response

    def header(self, name: str) -> bytes | None:
        """The first value of header `name`, or None."""
        wanted = name.lower().encode()
        return next((value for key, value in self.headers if key == wanted), None)

    def header_values(self, name: str) -> list[bytes]:
        wanted = name.lower().encode()
        return [value for key, value in self.headers if key == wanted]

    @property
    def error_code(self) -> str | None:
        """The sidecar's `x-modeltap-error` code, if this response carries one."""
        value = self.header("x-modeltap-error")
        return None if value is None else value.decode("latin-1")


@dataclass
class RawExchange:
    """Everything read from one connection: final responses, interim (1xx) ones, how it ended."""

    responses: list[RawResponse] = field(default_factory=list)
    interim: list[RawResponse] = field(default_factory=list)
    closed: bool = False  # the server closed the connection (EOF or reset)
    reset: bool = False  # ... with a reset
    timed_out: bool = False  # the read stopped at its timeout, neither closed nor complete
    raw: bytes = b""  # every byte received
    unparsed: bytes = b""  # trailing bytes that are not (yet) a whole response head

    @property
    def response(self) -> RawResponse:
        """The only final response; fails the test if there is not exactly one."""
        assert len(self.responses) == 1, f"expected one response, got {self.summary()}"
        return self.responses[0]

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    def summary(self) -> str:
        parts = [f"{r.status} {r.error_code or ''}".strip() for r in self.responses]
        end = "closed" if self.closed else "timed out" if self.timed_out else "open"
        return f"[{', '.join(parts)}] {end}; raw={self.raw[:300]!r}"


class ResponseParseError(ValueError):
    """The bytes received are not HTTP/1.1 responses (the server broke framing)."""


def parse_responses(
    data: bytes, *, closed: bool, ended: bool | None = None
) -> tuple[list[RawResponse], list[RawResponse], bytes]:
    """Split `data` into (final responses, interim responses, unparsed rest). `closed`: the
    connection ended, so a body framed by its end is complete; `ended` (default: `closed`): no
    more bytes will be read, so a cut-off response is returned too (marked incomplete)."""
    if ended is None:
        ended = closed
    finals: list[RawResponse] = []
    interim: list[RawResponse] = []
    pos = 0
    while pos < len(data):
        head_end = data.find(b"\r\n\r\n", pos)
        if head_end < 0:
            break
        lines = data[pos:head_end].split(b"\r\n")
        status, reason = _status_line(lines[0])
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise ResponseParseError(f"invalid response header line {line!r}")
            headers.append((name.lower(), value.strip(b" \t")))
        body_start = head_end + 4
        response = RawResponse(status, reason, headers, b"", complete=True)
        if 100 <= status < 200:
            interim.append(response)
            pos = body_start
            continue
        body, consumed, complete = _body(response, data[body_start:], closed=closed)
        response.body = body
        response.complete = complete
        if not complete and not ended:
            break  # wait for more bytes
        finals.append(response)
        pos = body_start + consumed
        if not complete:
            break
    return finals, interim, data[pos:]


def _status_line(line: bytes) -> tuple[int, bytes]:
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise ResponseParseError(f"invalid status line {line!r}")
    return int(parts[1]), parts[2] if len(parts) == 3 else b""


def _body(response: RawResponse, rest: bytes, *, closed: bool) -> tuple[bytes, int, bool]:
    """(body, bytes consumed, complete) for `response` from the bytes after its head."""
    if response.status in (204, 304):
        return b"", 0, True
    encoding = response.header("transfer-encoding")
    if encoding is not None and encoding.lower().endswith(b"chunked"):
        return _chunked(rest)
    length = response.header("content-length")
    if length is not None:
        if not length.isdigit():
            raise ResponseParseError(f"invalid Content-Length {length!r}")
        size = int(length)
        if len(rest) >= size:
            return rest[:size], size, True
        return rest, len(rest), False
    # Framed by the connection's end.
    return rest, len(rest), closed


def _chunked(rest: bytes) -> tuple[bytes, int, bool]:
    body = bytearray()
    pos = 0
    while True:
        line_end = rest.find(b"\r\n", pos)
        if line_end < 0:
            return bytes(body), pos, False
        size_text = rest[pos:line_end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ResponseParseError(f"invalid chunk size line {rest[pos:line_end]!r}") from None
        pos = line_end + 2
        if size == 0:
            trailer_end = rest.find(b"\r\n", pos)
            while trailer_end >= 0 and trailer_end != pos:  # skip trailer fields
                pos = trailer_end + 2
                trailer_end = rest.find(b"\r\n", pos)
            if trailer_end < 0:
                return bytes(body), pos, False
            return bytes(body), trailer_end + 2, True
        if len(rest) < pos + size + 2:
            body += rest[pos : pos + size]
            return bytes(body), len(rest), False
        body += rest[pos : pos + size]
        pos += size + 2


class RawClient:
    """One client connection to 127.0.0.1:`port`, optionally bound to `bind_host` first (to
    appear as another loopback address, e.g. 127.0.0.2)."""

    def __init__(
        self, port: int, *, host: str = "127.0.0.1", bind_host: str | None = None, timeout_s: float = 5.0
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if bind_host is not None:
            self.sock.bind((bind_host, 0))
        self.sock.settimeout(timeout_s)
        self.sock.connect((host, port))
        self.connected_at = time.monotonic()
        self._buffer = bytearray()
        self._closed = False
        self._reset = False
        self.closed_at: float | None = None
        self.send_failed = False

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def local_address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return str(host), int(port)

    # ---- sending ---------------------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Write all of `data` in one call; False if the server had already closed."""
        return self._write(data)

    def send_bytewise(self, data: bytes, delay_s: float = 0.0) -> bool:
        """Write `data` one byte per send (with `delay_s` between bytes)."""
        return self.send_slowly(data, piece_bytes=1, delay_s=delay_s)

    def send_slowly(self, data: bytes, *, piece_bytes: int = 1, delay_s: float = 0.05) -> bool:
        """Write `data` in pieces of `piece_bytes` with `delay_s` between them; stops (False) as
        soon as the server closed the connection."""
        for start in range(0, len(data), piece_bytes):
            if not self._write(data[start : start + piece_bytes]):
                return False
            if delay_s:
                time.sleep(delay_s)
        return True

    def _write(self, data: bytes) -> bool:
        if self.send_failed:
            return False
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.send_failed = True
            return False
        return True

    def shutdown_write(self) -> None:
        """Half-close: tell the server no more request bytes will come."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    # ---- reading ---------------------------------------------------------------------------

    def read(self, *, responses: int | None = None, timeout_s: float = 5.0) -> RawExchange:
        """Read until the server closes, or (when `responses` is given) until that many final
        responses are complete, or until `timeout_s`. Everything read so far is returned."""
        deadline = time.monotonic() + timeout_s
        timed_out = False
        while not self._closed:
            if responses is not None:
                finals, _interim, _rest = parse_responses(bytes(self._buffer), closed=False)
                if len(finals) >= responses:
                    break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            self._receive(remaining)
        return self.exchange(timed_out=timed_out)

    def wait_closed(self, timeout_s: float = 2.0) -> bool:
        """Read (keeping the bytes) until the server closes the connection; False at timeout."""
        deadline = time.monotonic() + timeout_s
        while not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._receive(remaining)
        return True

    def exchange(self, *, timed_out: bool = False) -> RawExchange:
        """What was read so far, parsed."""
        raw = bytes(self._buffer)
        finals, interim, rest = parse_responses(raw, closed=self._closed, ended=True)
        return RawExchange(
            responses=finals,
            interim=interim,
            closed=self._closed,
            reset=self._reset,
            timed_out=timed_out and not self._closed,
            raw=raw,
            unparsed=rest,
        )

    def _receive(self, timeout_s: float) -> None:
        self.sock.settimeout(max(timeout_s, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        except ConnectionResetError:
            self._mark_closed(reset=True)
            return
        if not data:
            self._mark_closed(reset=False)
            return
        self._buffer += data

    def _mark_closed(self, *, reset: bool) -> None:
        self._closed = True
        self._reset = reset
        self.closed_at = time.monotonic()

    def close(self) -> None:
        self.sock.close()


def exchange(
    port: int,
    data: bytes,
    *,
    mode: SendMode = "all",
    responses: int | None = 1,
    timeout_s: float = 5.0,
    wait_close_s: float = 0.0,
    bind_host: str | None = None,
) -> RawExchange:
    """Send `data` on a fresh connection and read the answer (`RawClient.read`); then, if
    `wait_close_s`, keep reading up to that long for the server to close the connection."""
    with RawClient(port, bind_host=bind_host, timeout_s=timeout_s) as client:
        if mode == "all":
            client.send(data)
        else:
            client.send_bytewise(data)
        result = client.read(responses=responses, timeout_s=timeout_s)
        if wait_close_s and not result.closed:
            client.wait_closed(wait_close_s)
            result = client.exchange(timed_out=result.timed_out)
        return result
