"""`modeltap.feedback(...)` and `modeltap.outcome(...)`: labels and business outcomes from code
running in the same process as the middleware.

Joins exactly like `POST {views_prefix}/feedback` (`/outcome`): handed to the analysis directly
when it runs in this process, sent over the monitor's private views socket when the monitor
process analyses.
Synchronous (milliseconds); from async code call it with `await asyncio.to_thread(...)`.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import orjson

from modeltap.errors import ModelTapError

if TYPE_CHECKING:
    from modeltap.middleware.asgi import ModelTapMiddleware

STARTING_WAIT_S = 5.0
_active: weakref.WeakSet[ModelTapMiddleware] = weakref.WeakSet()
_lock = threading.Lock()


def register(middleware: ModelTapMiddleware) -> None:
    with _lock:
        _active.add(middleware)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("monitor", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        # A monitor that is starting (imports take a second or two) is waited for.
        deadline = time.monotonic() + STARTING_WAIT_S
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self._path)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
                continue
            self.sock = sock
            return


def feedback(
    request_id: str | None = None,
    label: Any = None,
    row: int = 0,
    model_name: str | None = None,
    *,
    key: dict[str, Any] | None = None,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Send one label; returns the answer (`{"accepted": …, "duplicates": …, "rejected": […]}`).

    Join by `request_id` (the `x-request-id` the client sent, or the protocol's id) and `row`, or
    by `key={"transaction_id": "T-1042"}` when `label_key` is configured. Raises ModelTapError
    when no started middleware runs in this process, or the answer is not a 200.

    Example::

        modeltap.feedback(request_id="req-17", label="churned")
    """
    return _send("/feedback", _naming({"label": label}, request_id, row, model_name, key), timeout_s)


def outcome(
    request_id: str | None = None,
    name: str = "conversion",
    value: float | bool = 1,
    row: int = 0,
    model_name: str | None = None,
    *,
    key: dict[str, Any] | None = None,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Send one business outcome; answered like `feedback` (`{"accepted": …, …}`).

    `name` is one of the configured `outcome_names` (`conversion`: 1/0 or True/False, did the
    answered row lead to a conversion; `order_value`: its amount). Joined like a label: by
    `request_id` and `row`, or by `key={"transaction_id": "T-1042"}` when `label_key` is set.

    Example::

        modeltap.outcome(request_id="req-17", name="conversion", value=1)
        modeltap.outcome(request_id="req-17", name="order_value", value=42.5)
    """
    item = _naming({"name": name, "value": value}, request_id, row, model_name, key)
    return _send("/outcome", item, timeout_s)


def _naming(
    item: dict[str, Any],
    request_id: str | None,
    row: int,
    model_name: str | None,
    key: dict[str, Any] | None,
) -> dict[str, Any]:
    """`item` with what names its row: the key, or the request id and the row; and the model."""
    if key is not None:
        item["key"] = key
    else:
        item.update(request_id=request_id, row=row)
    if model_name is not None:
        item["model_name"] = model_name
    return item


def _send(path: str, item: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Post one item to the analysis (in this process, or the monitor's views socket)."""
    what = "feedback" if path == "/feedback" else "outcome"
    with _lock:
        candidates = [m for m in _active if m.tap.capture is not None]
    if len(candidates) != 1:
        raise ModelTapError(
            f"modeltap.{what} needs exactly one started ModelTapMiddleware in this process "
            f"(found {len(candidates)}); post to {{views_prefix}}{path} instead"
        )
    tap = candidates[0].tap
    try:
        body = orjson.dumps([item])
    except TypeError as exc:  # orjson.JSONEncodeError: a value JSON cannot hold
        raise ModelTapError(f"the {what} cannot be sent as JSON: {exc}") from None
    if tap.mode == "process" and tap.place is not None:
        connection = _UnixConnection(str(tap.place.views_socket), timeout_s)
        try:
            connection.request("POST", path, body, {"content-type": "application/json"})
            response = connection.getresponse()
            status, answer = response.status, response.read()
        except OSError as exc:
            raise ModelTapError(f"the modeltap monitor did not take the {what}: {exc}") from None
        finally:
            connection.close()
    else:
        endpoint = tap.analyzer.feedback if path == "/feedback" else tap.analyzer.outcome
        status, answer = endpoint(body, "application/json")
    if status != 200:
        raise ModelTapError(f"{what} refused ({status}): {answer.decode(errors='replace').strip()}")
    result: dict[str, Any] = orjson.loads(answer)
    return result
