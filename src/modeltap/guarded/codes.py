"""The sidecar's own failures: one code per cause, sent as `x-modeltap-error` and counted as
`modeltap.proxy.errors{modeltap.error.code}` (Envoy's response-code-details, in spirit)."""

from __future__ import annotations

from modeltap.errors import ModelTapError

ERROR_HEADER = b"x-modeltap-error"

# code -> HTTP status the sidecar answers with when the response has not started yet.
STATUS_BY_CODE: dict[str, int] = {
    "invalid_request": 400,
    "unsupported_transfer_encoding": 501,
    "method_not_allowed": 405,
    "upgrade_not_supported": 501,
    "request_header_timeout": 408,
    "request_body_timeout": 408,
    "uri_too_long": 414,
    "request_headers_too_large": 431,
    "request_body_too_large": 413,
    "overloaded": 503,
    "draining": 503,
    "upstream_connect_failure": 502,
    "upstream_connect_timeout": 504,
    "upstream_response_timeout": 504,
    "upstream_idle_timeout": 504,
    "upstream_reset_before_response_started": 502,
    "upstream_protocol_error": 502,
    # After the response started there is no status to send: the downstream connection is
    # aborted so the client sees a failure, never a shorter body that looks complete.
    "upstream_reset_after_response_started": 502,
    "client_disconnected": 499,
}


class ProxyError(ModelTapError):
    """A failure on the proxied exchange, with its code (see `STATUS_BY_CODE`)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.status = STATUS_BY_CODE[code]


def error_response(code: str, detail: str, *, close: bool) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and a short text body for an error the sidecar answers itself."""
    body = f"{detail}\n".encode("ascii", "replace")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (ERROR_HEADER, code.encode()),
    ]
    if code in ("overloaded", "draining"):
        headers.append((b"retry-after", b"1"))
    if close:
        headers.append((b"connection", b"close"))
    return STATUS_BY_CODE[code], headers, body
