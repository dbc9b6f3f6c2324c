"""A transport without a socket, for driving the sidecar's protocols in unit tests: it keeps what
is written, whether it was closed and how often reading was paused."""

from __future__ import annotations

import asyncio
from typing import Any

# What a client connection's transport tells about its socket.
CLIENT_SOCKET = {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}


class FakeTransport(asyncio.Transport):
    def __init__(self, extra: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._extra = extra or {}
        self.written: list[bytes] = []
        self.closing = False
        self.paused = 0

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)
