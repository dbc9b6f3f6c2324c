"""`modeltap drill --admin URL`: run a fire drill in a running monitor and say what worked.

URL is where the views are: the sidecar's admin port (`http://127.0.0.1:9464`) or a server's
views prefix with the middleware (`http://127.0.0.1:8080/modeltap`). The drill starts with
`POST URL/drill`; its report is read from `GET URL/drill` until it is over, then printed as a
table: each expected alert (fired and resolved after how long), each receiver (acknowledged the
firing and the resolved notification after how long), and every problem. Exit status 0 only when
the drill passed; 1 when it failed or could not run, with the reason.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, TextIO
from urllib.parse import urlsplit

from modeltap.errors import ModelTapError

POLL_S = 0.5
MARGIN_S = 15.0  # beyond the drill's own timeout, for the monitor to finish its report


def _call(url: str, token: str | None, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    method = "POST" if body is not None else "GET"
    # The scheme is checked in `run_drill` (http or https only).
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310
            raw = response.read()
            try:
                document = json.loads(raw)
            except ValueError:
                raise ModelTapError(
                    f"{url} answered something else than a drill report: is --admin right?"
                ) from None
            return int(response.status), document
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            document = json.loads(raw)
        except ValueError:
            document = {"error": raw.decode(errors="replace").strip()}
        return int(exc.code), document if isinstance(document, dict) else {"error": str(document)}
    except urllib.error.URLError as exc:
        raise ModelTapError(f"{url}: {exc.reason}") from None


def drill(base: str, scenario: str, timeout_s: float, token: str | None) -> dict[str, Any]:
    """Start a drill and wait for its report."""
    url = base.rstrip("/") + "/drill"
    body = json.dumps({"scenario": scenario, "timeout_s": timeout_s}).encode()
    status, document = _call(url, token, body)
    if status == 409:
        raise ModelTapError(f"{url}: a drill is running already; try again when it is over")
    if status not in (200, 202):
        raise ModelTapError(f"{url} answered {status}: {document.get('error', document)}")
    ident = document.get("id")
    deadline = time.monotonic() + timeout_s + MARGIN_S
    while document.get("state") == "running":
        if time.monotonic() > deadline:
            raise ModelTapError(f"{url}: the drill did not end within {timeout_s + MARGIN_S:g} s")
        time.sleep(POLL_S)
        status, document = _call(url, token)
        if status != 200 or document.get("id") != ident:
            raise ModelTapError(f"{url}: the drill's report is gone ({status}): did the monitor restart?")
    return document


def _seconds(value: object) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) else "-"


def render(report: dict[str, Any]) -> str:
    lines = [
        f"modeltap drill {report['id']} on {report['model']} version {report['version']}: "
        f"{report['state'].upper()} in {report['elapsed_s']:.1f} s",
        "",
        f"{'scenario':<12}{'alert':<28}{'severity':<10}{'fired after':>12}{'resolved after':>16}",
    ]
    for alert in report["alerts"]:
        lines.append(
            f"{alert['scenario']:<12}{alert['subject']:<28}{alert['severity'] or '-':<10}"
            f"{_seconds(alert['fired_after_s']):>12}{_seconds(alert['resolved_after_s']):>16}"
        )
    for scenario, reason in report.get("skipped", {}).items():
        lines.append(f"{scenario:<12}skipped: {reason}")
    lines += ["", f"{'receiver':<46}{'firing acked after':>20}{'resolved acked after':>22}"]
    for receiver in report["receivers"]:
        name = f"{receiver['kind']} {receiver['url']}"
        lines.append(
            f"{name:<46}{_seconds(receiver['firing_acknowledged_after_s']):>20}"
            f"{_seconds(receiver['resolved_acknowledged_after_s']):>22}"
        )
    if not report["receivers"]:
        lines.append("(none configured)")
    if report["problems"]:
        lines += ["", "problems:"]
        lines += [f"  - {problem}" for problem in report["problems"]]
    return "\n".join(lines)


def run_drill(args: Any, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parts = urlsplit(args.admin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelTapError(f"--admin must be an http(s) URL, got {args.admin!r}")
    token = args.token or os.environ.get("MODELTAP_VIEWS_TOKEN") or None
    report = drill(args.admin, args.scenario, args.timeout, token)
    print(render(report), file=out, flush=True)
    return 0 if report["state"] == "passed" else 1
