"""`modeltap feedback labels.csv --url URL`: upload labels from a file.

The CSV has a header row: `request_id`, optional `row` (default 0) and `label` columns, and an
optional `model_name`; or, with `--key COLUMN`, that column's values join by the configured
`label_key` instead of a request id. Rows go as NDJSON bodies under the 1 MiB limit; the
answers are added up, and rejected rows are reported by their line in the file.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from modeltap.errors import ModelTapError

BODY_BYTES = 900 * 1024  # under the endpoint's 1 MiB


@dataclass
class UploadResult:
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line in the file, reason)


def _items(path: Path, key: str | None) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        needed = {"label", key} if key else {"label", "request_id"}
        missing = needed - columns
        if missing:
            raise ModelTapError(f"{path}: the header needs the column(s) {', '.join(sorted(missing))}")
        for line, record in enumerate(reader, start=2):
            item: dict[str, Any] = {"label": record["label"]}
            if key:
                item["key"] = {key: record[key]}
            else:
                item["request_id"] = record["request_id"]
                if record.get("row"):
                    item["row"] = int(record["row"]) if record["row"].isdigit() else record["row"]
            if record.get("model_name"):
                item["model_name"] = record["model_name"]
            yield line, item


def _post(url: str, body: bytes, token: str | None, timeout_s: float) -> dict[str, Any]:
    headers = {"content-type": "application/x-ndjson"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    # The scheme is checked in `upload` (http or https only).
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        raise ModelTapError(f"{url} answered {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise ModelTapError(f"{url}: {exc.reason}") from None


def upload(
    path: Path, url: str, key: str | None = None, token: str | None = None, timeout_s: float = 30.0
) -> UploadResult:
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ModelTapError(f"--url must be an http(s) URL, got {url!r}")
    result = UploadResult()
    lines: list[int] = []
    chunk: list[bytes] = []
    size = 0

    def send() -> None:
        nonlocal chunk, lines, size
        if not chunk:
            return
        answer = _post(url, b"\n".join(chunk) + b"\n", token, timeout_s)
        result.sent += len(chunk)
        result.accepted += int(answer.get("accepted", 0))
        result.duplicates += int(answer.get("duplicates", 0))
        for rejection in answer.get("rejected", []):
            result.rejected.append((lines[int(rejection["index"])], str(rejection["reason"])))
        chunk, lines, size = [], [], 0

    for line, item in _items(path, key):
        encoded = json.dumps(item, separators=(",", ":")).encode()
        if size + len(encoded) + 1 > BODY_BYTES:
            send()
        chunk.append(encoded)
        lines.append(line)
        size += len(encoded) + 1
    send()
    return result


def run_upload(args: Any, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    token = args.token or os.environ.get("MODELTAP_VIEWS_TOKEN") or None
    result = upload(Path(args.labels), args.url, key=args.key, token=token)
    print(
        f"sent {result.sent} labels: {result.accepted} accepted, {result.duplicates} duplicates, "
        f"{len(result.rejected)} rejected",
        file=out,
    )
    for line, reason in result.rejected[:20]:
        print(f"  line {line}: {reason}", file=out)
    if len(result.rejected) > 20:
        print(f"  … and {len(result.rejected) - 20} more", file=out)
    return 0
