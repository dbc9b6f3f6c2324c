"""A real uvicorn server on 127.0.0.1 for integration tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


@contextlib.contextmanager
def serve(app: Any, name: str = "uvicorn-test", **options: Any) -> Iterator[str]:
    """Run `app` in a real uvicorn on 127.0.0.1 (an ephemeral port) in a background thread;
    yields the base URL and stops the server (bounded) on exit. `options` go to `uvicorn.Config`."""
    settings: dict[str, Any] = {"log_level": "warning", "lifespan": "on", **options}
    config = uvicorn.Config(app, host="127.0.0.1", port=0, **settings)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10.0
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during startup"
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10.0)
        assert not thread.is_alive(), "uvicorn did not shut down within 10 s"
