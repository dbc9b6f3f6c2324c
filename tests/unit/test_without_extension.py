"""Where `modeltap._speedups` was not built (another platform, no C compiler at install time),
everything runs in pure Python: the middleware is an ordinary ASGI 3 class and captures as
usual. Run in a fresh interpreter where importing the extension fails."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, inspect, json, sys
    sys.modules["modeltap._speedups"] = None  # importing it now raises ImportError

    from modeltap import ModelTapConfig, ModelTapMiddleware
    from modeltap.capture import compiled

    async def model(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def scope(method, path):
        return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
                "query_string": b"", "headers": [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}

    async def main():
        middleware = ModelTapMiddleware(model, config=ModelTapConfig.from_env({}, monitor="inline"))
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            sent.append(message)

        for _ in range(3):
            await middleware(scope("POST", "/predict"), receive, send)
        assert middleware.tap.flush(5.0)
        sent.clear()
        await middleware(scope("GET", "/modeltap/status"), receive, send)
        document = json.loads(sent[-1]["body"])
        middleware.tap.shutdown()
        print(json.dumps({
            "available": compiled.AVAILABLE,
            "coroutine_call": inspect.iscoroutinefunction(type(middleware).__call__),
            "bases": [base.__name__ for base in type(middleware).__mro__],
            "total": document["requests"]["total"],
        }))

    asyncio.run(main())
    """
)


def test_the_middleware_captures_in_pure_python_without_the_extension() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["available"] is False
    assert report["coroutine_call"] is True
    assert "Dispatch" not in report["bases"]
    assert report["total"] == 3
