"""What may leave the process: credentials never, payloads only on opt-in and truncated."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote

REDACTED = "REDACTED"

# Never exported, even if a user allow-lists them (RELIABILITY.md E3).
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "x-amz-security-token",
        "openai-api-key",
    }
)
# Query parameters whose values are secrets (semantic conventions list these for url.query).
SENSITIVE_QUERY_KEYS = frozenset(
    {"awsaccesskeyid", "signature", "sig", "x-goog-signature", "x-amz-signature", "x-amz-credential",
     "x-amz-security-token", "token", "access_token", "api_key", "apikey", "key", "password"}
)  # fmt: skip


def is_credential_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in CREDENTIAL_HEADERS or "api-key" in lowered or "apikey" in lowered


def redact_query(query: str) -> str:
    """Keep keys, replace secret values: `sig=abc&x=1` → `sig=REDACTED&x=1`."""
    if not query:
        return ""
    parts = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        shown = REDACTED if key.lower() in SENSITIVE_QUERY_KEYS else value
        parts.append(f"{quote(key, safe='')}={quote(shown, safe='')}")
    return "&".join(parts)


def truncate_utf8(data: bytes, max_bytes: int) -> tuple[str, bool]:
    """Decode at most `max_bytes`, cutting on a character boundary; (text, truncated)."""
    truncated = len(data) > max_bytes
    head = data[:max_bytes]
    if truncated:
        # Drop a partial multi-byte sequence at the cut (at most 3 continuation bytes).
        text = head.decode("utf-8", errors="ignore")
        for cut in range(len(head), max(len(head) - 4, -1), -1):
            try:
                text = head[:cut].decode("utf-8")
                break
            except UnicodeDecodeError:
                continue
        return text, True
    return head.decode("utf-8", errors="replace"), False
