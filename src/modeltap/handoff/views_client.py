"""The serving side's views in process mode: `/modeltap/*` is answered by the monitor.

The request is forwarded (after the access check, done in the serving process where the client's
address and headers are known) as a plain HTTP/1.1 GET over the monitor's views socket, and the
answer is passed on. Nothing is rendered on the serving event loop; a monitor that does not
answer costs a 503, never a hung request.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import quote

from modeltap.export.local_views import ViewAnswer
from modeltap.handoff.rendezvous import peer_is_us

MAX_VIEW_BYTES = 64 * 1024 * 1024
TIMEOUT_S = 10.0
# A monitor that is starting (imports take a second or two) is waited for this long.
STARTING_WAIT_S = 5.0
_PASSED_HEADERS = frozenset({b"content-type", b"cache-control", b"content-security-policy", b"allow"})


def _unavailable(reason: str) -> ViewAnswer:
    body = f"the modeltap monitor did not answer ({reason}); its numbers are not available now\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"retry-after", b"1"),
    ]
    return 503, headers, body


class MonitorViews:
    """Fetch a view from the monitor's views socket.

    Example::

        views = LocalViews("/modeltap", tap.latest_snapshot, remote=MonitorViews(place.views_socket))
    """

    def __init__(self, socket_path: Path, timeout_s: float = TIMEOUT_S) -> None:
        self._path = str(socket_path)
        self._timeout_s = timeout_s

    async def __call__(
        self, sub: str, query: bytes, method: str = "GET", body: bytes = b"", content_type: str = ""
    ) -> ViewAnswer:
        # The client's path and query are quoted: nothing it sends can change the request line.
        target = quote(sub or "/", safe="/")
        if query:
            target += "?" + quote(query.decode("latin-1"), safe="=&")
        verb = "POST" if method == "POST" else "GET"
        head = f"{verb} {target} HTTP/1.1\r\nhost: monitor\r\nconnection: close\r\n"
        if method == "POST":
            kind = "".join(c for c in content_type if c.isprintable() and c not in "\r\n")[:200]
            head += f"content-type: {kind or 'application/json'}\r\ncontent-length: {len(body)}\r\n"
        try:
            return await asyncio.wait_for(self._fetch(head.encode() + b"\r\n" + body), self._timeout_s)
        except asyncio.TimeoutError:
            return _unavailable("timed out")
        except OSError as exc:
            return _unavailable(exc.strerror or type(exc).__name__)
        except ValueError as exc:
            return _unavailable(str(exc))

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        deadline = asyncio.get_running_loop().time() + STARTING_WAIT_S
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self._path)
            except (FileNotFoundError, ConnectionRefusedError):
                if asyncio.get_running_loop().time() >= deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None and not peer_is_us(sock):
                writer.close()  # someone else's process behind the monitor's name: ask it nothing
                raise ValueError("the process behind the views socket runs as another user")
            return reader, writer

    async def _fetch(self, request: bytes) -> ViewAnswer:
        reader, writer = await self._connect()
        try:
            writer.write(request)
            await writer.drain()
            # Appended in place: `bytes +=` copied all read so far per chunk (2.9 s for 60 MiB).
            data = bytearray(await reader.read(MAX_VIEW_BYTES + 1))
            while True:
                more = await reader.read(MAX_VIEW_BYTES + 1 - len(data))
                if not more:
                    break
                data += more
                if len(data) > MAX_VIEW_BYTES:
                    raise ValueError("view too large")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, separator, body = bytes(data).partition(b"\r\n\r\n")
        if not separator:
            raise ValueError("incomplete answer")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ValueError("invalid status line")
        headers = [(b"content-length", str(len(body)).encode())]
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name in _PASSED_HEADERS:
                headers.append((name, value.strip()))
        return int(parts[1]), headers, body
