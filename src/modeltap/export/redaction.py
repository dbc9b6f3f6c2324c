"""What may leave the process: credentials never, payloads only on opt-in and truncated."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlsplit

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


# Names holding any of these are taken for secrets too, whatever their prefix or suffix
# (`x-session-token`, `client_secret`, `refresh_token`, `x-api-key`, `auth`): a name wrongly
# taken for a secret costs a REDACTED value, a secret missed leaks it.
SECRET_NAME_PARTS = (
    "api-key", "apikey", "api_key", "token", "secret", "passw", "auth", "credential", "signature",
    "session",
)  # fmt: skip


def _looks_secret(lowered: str) -> bool:
    return any(part in lowered for part in SECRET_NAME_PARTS)


def is_credential_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in CREDENTIAL_HEADERS or _looks_secret(lowered)


def is_sensitive_query_key(key: str) -> bool:
    lowered = key.lower()
    return lowered in SENSITIVE_QUERY_KEYS or _looks_secret(lowered)


def redact_query(query: str) -> str:
    """Keep keys, replace secret values: `sig=abc&x=1` → `sig=REDACTED&x=1`.

    `;` separates pairs as `&` does: some servers split on it, so `a=1;token=x` hides a token.
    """
    if not query:
        return ""
    parts = []
    for key, value in parse_qsl(query.replace(";", "&"), keep_blank_values=True):
        shown = REDACTED if is_sensitive_query_key(key) else value
        parts.append(f"{quote(key, safe='')}={quote(shown, safe='')}")
    return "&".join(parts)


def redact_url(url: str) -> str:
    """A URL as logs and reports show it: scheme, host and port only (webhook paths and queries
    often hold the credential, as Slack's do; user info is never shown)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port that is not a number
        port = ""
    rest = "/…" if parts.path not in ("", "/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


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
