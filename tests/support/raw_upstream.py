"""A scriptable HTTP/1.1 upstream on plain sockets, for the sidecar's fault tests (RELIABILITY.md A).

No HTTP framework: every byte it sends is written here, so it can send what no framework would
(an invalid status line, conflicting lengths, a reset before the headers, half a body). One thread
accepts, one thread serves each connection (keep-alive included). The request path picks the
behaviour (see `RawUpstream.behaviours`), the query string its parameters, e.g.
`/stream?chunks=100&delay=0.02`. Requests are counted per path and connections as accepted, so a
test can tell whether the sidecar retried.

A port nobody listens on (connection refused) is `unused_port()`.

Example::

    with RawUpstream() as upstream, running_sidecar(upstream.url) as sidecar:
        httpx.get(f"{sidecar.url}/status?code=503")
        assert upstream.count("/status") == 1
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import hashlib
import json
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

BLOCK = 64 * 1024
_BASE = random.Random(20240601).randbytes(BLOCK)
_MAX_HEAD = 1024 * 1024


def body_blocks(size: int, block: int = BLOCK) -> Iterator[bytes]:
    """The deterministic test body of `size` bytes, in pieces of at most `block` bytes.

    Every 64 KiB of it starts with its own index, so a repeated, lost or reordered block changes
    the digest; `block` only changes how it is cut, never the bytes.
    """
    offset = 0
    while offset < size:
        index, within = divmod(offset, BLOCK)
        piece = (index.to_bytes(8, "big") + _BASE[8:])[within : within + min(block, size - offset)]
        yield piece
        offset += len(piece)


def body_bytes(size: int) -> bytes:
    return b"".join(body_blocks(size))


def body_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for piece in body_blocks(size):
        digest.update(piece)
    return digest.hexdigest()


def unused_port() -> int:
    """A loopback port nobody listens on (bound, then released): connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PeerGone(Exception):
    """The peer closed (or reset) the connection, or the upstream is stopping."""


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: list[tuple[str, str]]  # names lower-cased, in order
    peer: tuple[str, int]
    exchange: int  # 0 for the first request on its connection
    body: bytes | None = None  # set once read

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def number(self, name: str, default: float) -> float:
        return float(self.query.get(name, default))

    def integer(self, name: str, default: int) -> int:
        return int(self.query.get(name, default))


@dataclass
class Connection:
    """One accepted connection: buffered reads and plain writes."""

    sock: socket.socket
    stopping: threading.Event
    buffer: bytearray = field(default_factory=bytearray)

    def fill(self) -> None:
        if self.stopping.is_set():
            raise PeerGone
        try:
            data = self.sock.recv(256 * 1024)
        except (ConnectionError, OSError) as exc:
            raise PeerGone from exc
        if not data:
            raise PeerGone
        self.buffer += data

    def read_until(self, marker: bytes, limit: int) -> bytes:
        while True:
            end = self.buffer.find(marker)
            if end >= 0:
                end += len(marker)
                data = bytes(self.buffer[:end])
                del self.buffer[:end]
                return data
            if len(self.buffer) > limit:
                raise PeerGone  # not HTTP: give up on the connection
            self.fill()

    def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (ConnectionError, OSError) as exc:
            raise PeerGone from exc

    def wait_until_closed(self) -> None:
        """Read and discard until the peer closes (or the upstream stops)."""
        while True:
            self.buffer.clear()
            self.fill()

    def reset(self) -> None:
        """Close with RST instead of FIN (SO_LINGER on, timeout 0)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


Behaviour = Callable[[Connection, Request], bool]  # True: the connection may serve another request


class RawUpstream:
    """The scripted upstream; a context manager that listens on 127.0.0.1 (an ephemeral port).

    `idle_close_s` closes a keep-alive connection that stays idle that long after a response
    (as uvicorn's `timeout_keep_alive` does).
    """

    def __init__(self, idle_close_s: float | None = None) -> None:
        self.idle_close_s = idle_close_s
        self._lock = threading.Lock()
        self._requests: collections.Counter[str] = collections.Counter()
        self.connections_accepted = 0  # readiness probes included
        self.request_connections = 0  # connections that carried at least one request
        self.peer_closed = 0  # connections the peer closed while a behaviour waited on them
        self.closed_after_answer = 0  # connections `/close-after-answer` closed (or reset)
        self._open: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self.behaviours: dict[str, Behaviour] = {
            "/ok": self.ok,
            "/sleep": self.sleep,
            "/hang": self.hang,
            "/stall-after-headers": self.stall_after_headers,
            "/close-mid-body": self.close_mid_body,
            "/until-close": self.until_close,
            "/close-before-headers": self.close_before_headers,
            "/reset-before-headers": self.reset_before_headers,
            "/reset-mid-body": self.reset_mid_body,
            "/drop-on-reuse": self.drop_on_reuse,
            "/close-after-answer": self.close_after_answer,
            "/ok-with": self.ok_with,
            "/invalid": self.invalid,
            "/drip": self.drip,
            "/split": self.split,
            "/stream": self.stream,
            "/huge": self.huge,
            "/status": self.status,
            "/no-content": self.no_content,
            "/not-modified": self.not_modified,
            "/head": self.head,
            "/gzip": self.gzip,
            "/echo": self.echo,
            "/echo-body": self.echo_body,
            "/interim": self.interim,
        }

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RawUpstream:
        self._spawn(self._accept_loop, "raw-upstream-accept")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._threads[0].join(5.0)  # the accept loop: no thread is spawned after it
        for thread in self._threads[1:]:
            thread.join(5.0)
        self._listener.close()

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # ---- counters --------------------------------------------------------------------------

    def count(self, path: str) -> int:
        """Requests received for `path` so far."""
        with self._lock:
            return self._requests[path]

    def counts(self) -> dict[str, int]:
        """Requests received so far, per path."""
        with self._lock:
            return dict(self._requests)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    # ---- serving ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections_accepted += 1
                self._open.add(sock)
            self._spawn(self._serve, "raw-upstream-conn", sock, peer)

    def _serve(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        conn = Connection(sock, self._stopping)
        exchange = 0
        try:
            while True:
                if exchange and self.idle_close_s is not None and not conn.buffer:
                    sock.settimeout(self.idle_close_s)
                    try:
                        conn.fill()
                    except PeerGone:
                        return  # idle too long (or the peer left): close, as a keep-alive timeout does
                    finally:
                        if sock.fileno() >= 0:
                            sock.settimeout(None)
                request = self._read_head(conn, peer, exchange)
                with self._lock:
                    self._requests[request.path] += 1
                    self.request_connections += exchange == 0
                behaviour = self.behaviours.get(request.path, self.not_found)
                if not behaviour(conn, request):
                    return
                self.read_body(conn, request)  # whatever the behaviour did not read
                exchange += 1
        except PeerGone:
            return
        finally:
            with self._lock:
                self._open.discard(sock)
            sock.close()

    def _read_head(self, conn: Connection, peer: tuple[str, int], exchange: int) -> Request:
        head = conn.read_until(b"\r\n\r\n", _MAX_HEAD).decode("latin-1")
        lines = head.split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
        parts = urlsplit(target)
        return Request(method, target, parts.path, dict(parse_qsl(parts.query)), headers, peer, exchange)

    def read_body(self, conn: Connection, request: Request) -> bytes:
        """The request body (Content-Length or chunked), read once."""
        if request.body is not None:
            return request.body
        if (request.header("transfer-encoding") or "").lower() == "chunked":
            pieces: list[bytes] = []
            while True:
                size = int(conn.read_until(b"\r\n", 1024).split(b";")[0], 16)
                if size == 0:
                    while conn.read_until(b"\r\n", 64 * 1024) != b"\r\n":
                        pass  # trailers
                    break
                pieces.append(conn.read_exactly(size))
                conn.read_exactly(2)
            request.body = b"".join(pieces)
        else:
            request.body = conn.read_exactly(int(request.header("content-length") or 0))
        return request.body

    def _wait_for_peer_close(self, conn: Connection) -> bool:
        try:
            conn.wait_until_closed()
        except PeerGone:
            if not self._stopping.is_set():
                with self._lock:
                    self.peer_closed += 1
        return False

    @staticmethod
    def _response(status: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
        lines = [f"HTTP/1.1 {status}\r\n"] + [f"{name}: {value}\r\n" for name, value in headers]
        return "".join(lines).encode("latin-1") + b"\r\n" + body

    def _send_ok(self, conn: Connection, body: bytes, content_type: str = "text/plain") -> bool:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        conn.send(self._response("200 OK", headers, body))
        return True

    # ---- behaviours ------------------------------------------------------------------------

    def not_found(self, conn: Connection, request: Request) -> bool:
        self.read_body(conn, request)
        conn.send(self._response("404 Not Found", [("Content-Length", "0")]))
        return True

    def ok(self, conn: Connection, request: Request) -> bool:
        self.read_body(conn, request)
        return self._send_ok(conn, b"ok")

    def sleep(self, conn: Connection, request: Request) -> bool:
        """`s` seconds, then 200 "slept"."""
        self.read_body(conn, request)
        self._stopping.wait(request.number("s", 1.0))
        return self._send_ok(conn, b"slept")

    def hang(self, conn: Connection, request: Request) -> bool:
        """Read the request, never answer; counts `peer_closed` when the sidecar gives up."""
        self.read_body(conn, request)
        return self._wait_for_peer_close(conn)

    def stall_after_headers(self, conn: Connection, request: Request) -> bool:
        """Status and headers (and `sent` body bytes), then nothing; `chunked=1` frames by chunks."""
        self.read_body(conn, request)
        sent = request.integer("sent", 100)
        if request.integer("chunked", 0):
            body = b"%x\r\n%s\r\n" % (sent, body_bytes(sent)) if sent else b""
            conn.send(self._response("200 OK", [("Transfer-Encoding", "chunked")], body))
        else:
            conn.send(self._response("200 OK", [("Content-Length", "1000")], body_bytes(sent)))
        return self._wait_for_peer_close(conn)

    def close_mid_body(self, conn: Connection, request: Request) -> bool:
        """Content-Length `length` (1000), `sent` (400) bytes of it, then FIN after `pause` s
        (0.1, so the response has started downstream); `chunked=1`: one chunk of `sent` bytes,
        then FIN without the last chunk."""
        self.read_body(conn, request)
        sent = request.integer("sent", 400)
        if request.integer("chunked", 0):
            head = self._response("200 OK", [("Transfer-Encoding", "chunked")])
            conn.send(head + b"%x\r\n%s\r\n" % (sent, body_bytes(sent)))
        else:
            headers = [("Content-Length", str(request.integer("length", 1000)))]
            conn.send(self._response("200 OK", headers, body_bytes(sent)))
        self._stopping.wait(request.number("pause", 0.1))
        return False

    def until_close(self, conn: Connection, request: Request) -> bool:
        """A 200 with neither Content-Length nor chunked: the body (`size` bytes) ends with FIN."""
        self.read_body(conn, request)
        conn.send(
            self._response(
                "200 OK", [("Content-Type", "text/plain")], body_bytes(request.integer("size", 3000))
            )
        )
        return False

    def close_before_headers(self, conn: Connection, request: Request) -> bool:
        self.read_body(conn, request)
        return False

    def reset_before_headers(self, conn: Connection, request: Request) -> bool:
        self.read_body(conn, request)
        conn.reset()
        return False

    def reset_mid_body(self, conn: Connection, request: Request) -> bool:
        self.read_body(conn, request)
        conn.send(self._response("200 OK", [("Content-Length", "1000")], body_bytes(400)))
        time.sleep(0.05)  # let the bytes leave before the reset discards the send queue
        conn.reset()
        return False

    def drop_on_reuse(self, conn: Connection, request: Request) -> bool:
        """200 on a connection's first request; on a later one, read it and close without an
        answer (the upstream's keep-alive timer fired just as the request arrived)."""
        self.read_body(conn, request)
        if request.exchange:
            return False
        return self._send_ok(conn, b"first")

    def close_after_answer(self, conn: Connection, request: Request) -> bool:
        """200 "ok" framed for keep-alive, then, `after` s (0.05) later, a close while the
        connection is idle: FIN, or a reset with `reset=1`. Counted in `closed_after_answer`."""
        self.read_body(conn, request)
        self._send_ok(conn, b"ok")
        if self._stopping.wait(request.number("after", 0.05)):
            return False
        if request.integer("reset", 0):
            conn.reset()
        else:
            conn.sock.close()
        with self._lock:
            self.closed_after_answer += 1
        return False

    def ok_with(self, conn: Connection, request: Request) -> bool:
        """200 "ok" with status-line version `version` (1.1) and, if given, a `Connection`
        header `connection`; the connection stays open whatever the header says."""
        self.read_body(conn, request)
        headers = [("Content-Length", "2")]
        if "connection" in request.query:
            headers.append(("Connection", request.query["connection"]))
        version = request.query.get("version", "1.1")
        conn.send(
            self._response("200 OK", headers, b"ok").replace(b"HTTP/1.1", b"HTTP/" + version.encode(), 1)
        )
        return True

    INVALID: dict[str, bytes] = {
        "status-line": b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
        "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        "cl-and-te": (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        ),
        "conflicting-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        "bare-cr": b"HTTP/1.1 200 OK\r\nX-Injected: a\rSet-Cookie: evil=1\r\nContent-Length: 2\r\n\r\nok",
        "nul": b"HTTP/1.1 200 OK\r\nX-Injected: a\x00b\r\nContent-Length: 2\r\n\r\nok",
        "ctl": b"HTTP/1.1 200 OK\r\nX-Injected: a\x01b\r\nContent-Length: 2\r\n\r\nok",
        "space-in-name": b"HTTP/1.1 200 OK\r\nX Injected: a\r\nContent-Length: 2\r\n\r\nok",
        "status-999": b"HTTP/1.1 999 Unknown\r\nContent-Length: 2\r\n\r\nok",
        "upgrade": b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        "te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
        "te-chunked-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "bare-lf": b"HTTP/1.1 200 OK\r\nX-Injected: a\nSet-Cookie: evil=1\r\nContent-Length: 2\r\n\r\nok",
        "obs-fold": b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n Set-Cookie: evil=1\r\nContent-Length: 2\r\n\r\nok",
        "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        "huge-headers": (
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-Filler-%03d: %s\r\n" % (i, b"f" * 1000) for i in range(80))
            + b"Content-Length: 2\r\n\r\nok"
        ),
    }

    def invalid(self, conn: Connection, request: Request) -> bool:
        """One malformed response from `INVALID`, chosen by `kind`, then wait for the peer."""
        self.read_body(conn, request)
        conn.send(self.INVALID[request.query["kind"]])
        return self._wait_for_peer_close(conn)

    def split(self, conn: Connection, request: Request) -> bool:
        """A 200 whose `size`-byte body (16) is written `pause` s (0.01) after its head, as servers
        write a small response in two segments."""
        self.read_body(conn, request)
        size = request.integer("size", 16)
        conn.send(self._response("200 OK", [("Content-Length", str(size))]))
        if self._stopping.wait(request.number("pause", 0.01)):
            return False
        conn.send(body_bytes(size))
        return True

    def drip(self, conn: Connection, request: Request) -> bool:
        """A 200 with a `size`-byte body sent one byte per `interval` s; `part=head` drips the
        status line and headers too, `part=body` (the default) only the body."""
        self.read_body(conn, request)
        size = request.integer("size", 10)
        interval = request.number("interval", 0.05)
        response = self._response("200 OK", [("Content-Length", str(size))], body_bytes(size))
        start = 0 if request.query.get("part") == "head" else len(response) - size
        conn.send(response[:start])
        for i in range(start, len(response)):
            if self._stopping.wait(interval):
                return False
            conn.send(response[i : i + 1])
        return True

    def stream(self, conn: Connection, request: Request) -> bool:
        """`chunks` chunks `delay` s apart, chunked; each is `<index> <time.monotonic()>\\n`
        padded with dots to `size` bytes, so a client in this process can measure the lag."""
        self.read_body(conn, request)
        chunks = request.integer("chunks", 10)
        delay = request.number("delay", 0.02)
        size = request.integer("size", 32)
        conn.send(
            self._response("200 OK", [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")])
        )
        for i in range(chunks):
            if i and self._stopping.wait(delay):
                return False
            line = f"{i} {time.monotonic():.6f}".encode().ljust(size - 1, b".") + b"\n"
            conn.send(b"%x\r\n%s\r\n" % (len(line), line))
        conn.send(b"0\r\n\r\n")
        return True

    def huge(self, conn: Connection, request: Request) -> bool:
        """`size` bytes of `body_blocks`, generated while sending; `chunked=1` frames them by
        chunks, else Content-Length."""
        self.read_body(conn, request)
        size = request.integer("size", 0)
        chunked = bool(request.integer("chunked", 0))
        framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(size))
        conn.send(self._response("200 OK", [("Content-Type", "application/octet-stream"), framing]))
        for piece in body_blocks(size, block=1024 * 1024):
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            conn.send(b"0\r\n\r\n")
        return True

    REASONS = {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}

    def status(self, conn: Connection, request: Request) -> bool:
        """Status `code` with a JSON body and custom headers (an upstream's own error)."""
        self.read_body(conn, request)
        code = request.integer("code", 500)
        body = json.dumps({"error": f"upstream says {code}"}).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("X-Upstream-Trace", f"trace-{code}"),
            ("Retry-After", "7"),
            ("Content-Length", str(len(body))),
        ]
        conn.send(self._response(f"{code} {self.REASONS.get(code, 'Status')}", headers, body))
        return True

    def no_content(self, conn: Connection, request: Request) -> bool:
        """204; `length=N` adds the Content-Length RFC 9110 forbids there (no body follows)."""
        self.read_body(conn, request)
        headers = [("X-Kind", "no-content")]
        if "length" in request.query:
            headers.append(("Content-Length", request.query["length"]))
        conn.send(self._response("204 No Content", headers))
        return True

    def not_modified(self, conn: Connection, request: Request) -> bool:
        """304 with the ETag and the Content-Length a 200 would have had (RFC 9110 8.6), no body."""
        self.read_body(conn, request)
        headers = [("ETag", '"v1"'), ("Content-Length", "1234")]
        conn.send(self._response("304 Not Modified", headers))
        return True

    def head(self, conn: Connection, request: Request) -> bool:
        """5000 bytes for GET; for HEAD the same headers and no body."""
        self.read_body(conn, request)
        body = b"" if request.method == "HEAD" else body_bytes(5000)
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", "5000")]
        conn.send(self._response("200 OK", headers, body))
        return True

    GZIP_DOCUMENT = {"predictions": list(range(200)), "model": "gzip-test"}

    def gzip(self, conn: Connection, request: Request) -> bool:
        self.read_body(conn, request)
        body = gzip.compress(json.dumps(self.GZIP_DOCUMENT).encode(), mtime=0)
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("Content-Length", str(len(body))),
        ]
        conn.send(self._response("200 OK", headers, body))
        return True

    def echo(self, conn: Connection, request: Request) -> bool:
        """JSON: method, target, headers, peer, and the body's length and sha256."""
        body = self.read_body(conn, request)
        document = {
            "method": request.method,
            "target": request.target,
            "headers": request.headers,
            "peer": list(request.peer),
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        return self._send_ok(conn, json.dumps(document).encode(), "application/json")

    def echo_body(self, conn: Connection, request: Request) -> bool:
        """The request body back, as it came; `chunked=1` frames it by chunks."""
        body = self.read_body(conn, request)
        if not request.integer("chunked", 0):
            return self._send_ok(conn, body, "application/octet-stream")
        conn.send(self._response("200 OK", [("Transfer-Encoding", "chunked")]))
        for offset in range(0, len(body), 1024 * 1024):
            piece = body[offset : offset + 1024 * 1024]
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")
        return True

    def interim(self, conn: Connection, request: Request) -> bool:
        """`100 Continue` (and `103 Early Hints` with `hints=1`) before reading the body, then a
        200 whose body is the request body's sha256."""
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if request.integer("hints", 0):
            conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        body = self.read_body(conn, request)
        return self._send_ok(conn, hashlib.sha256(body).hexdigest().encode())
