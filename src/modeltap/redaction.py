"""What may leave the process: credentials never, payloads only on opt-in and truncated."""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

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


# Words that make a name a secret's, wherever they stand in it (`x-session-token`,
# `client_secret`, `refresh_token`, `x-auth-request-user`): the name is split on `-`, `_`, `.`
# and the like, so `max_tokens`, `tokenizer` and `author` stay shown. A word also counts by how
# it starts (`secretKey`, `passwordHash`, `authKey`, `sessionid`, `tokenid`, `oauth_verifier`),
# and a name written as one word by its ending (`accesstoken`, `xapikey`). A session id is taken
# for a credential: it often is one.
SECRET_WORDS = frozenset(
    {"token", "secret", "password", "passwd", "pwd", "auth", "authorization", "authentication",
     "credential", "credentials", "signature", "sig", "apikey", "session"}
)  # fmt: skip
_SECRET_STARTS = ("secret", "passw", "credential", "session", "oauth", "apikey")
_NOT_SECRET_TOKEN_WORDS = frozenset({"tokens", "tokenizer", "tokenize", "tokenized", "tokenizers"})
_SECRET_ENDINGS = (
    "token", "secret", "password", "passwd", "apikey", "credential", "credentials", "signature", "sessionid",
    "sessid",
)  # fmt: skip
_SEPARATORS = re.compile(r"[^a-z0-9]+")


def _secret_word(word: str) -> bool:
    if word in SECRET_WORDS or word.startswith(_SECRET_STARTS):
        return True
    if word.startswith("auth"):
        return not word.startswith("author") or word.startswith("authoriz")
    return word.startswith("token") and word not in _NOT_SECRET_TOKEN_WORDS


def _looks_secret(lowered: str) -> bool:
    words = [word for word in _SEPARATORS.split(lowered) if word]
    if any(_secret_word(word) for word in words):
        return True
    joined = "".join(words)
    return "apikey" in joined or joined.endswith(_SECRET_ENDINGS)


def is_credential_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in CREDENTIAL_HEADERS or _looks_secret(lowered)


def is_sensitive_query_key(key: str) -> bool:
    lowered = key.lower()
    return lowered in SENSITIVE_QUERY_KEYS or _looks_secret(lowered)


def may_hold_a_secret(setting: str) -> bool:
    """Whether a setting's value (by its name or its variable's) may be a credential: it is never
    repeated in an error. Exporter headers carry API keys; webhook URLs carry theirs in the path."""
    lowered = setting.lower()
    return _looks_secret(lowered) or any(part in lowered for part in ("headers", "webhook", "alertmanager"))


def variable_shown(variable: str, value: str) -> str:
    """A variable as an error message names it: `NAME='value'`, or the name alone where the value
    may be a credential; a URL's user info is never shown."""
    return variable if may_hold_a_secret(variable) else f"{variable}={without_userinfo(value)!r}"


_PAIR_SEPARATORS = re.compile(r"([&;])")


def redact_query(query: str) -> str:
    """Keep keys, replace secret values: `sig=abc&x=1` → `sig=REDACTED&x=1`.

    `;` separates pairs as `&` does (some servers split on it, so `a=1;token=x` hides a token);
    the separators and the other pairs are shown as sent.
    """
    if not query:
        return ""
    pieces = _PAIR_SEPARATORS.split(query)
    for index in range(0, len(pieces), 2):
        key, equals, _ = pieces[index].partition("=")
        if equals and is_sensitive_query_key(unquote_plus(key)):
            pieces[index] = f"{key}={REDACTED}"
    return "".join(pieces)


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


def without_userinfo(url: str) -> str:
    """The URL as given, its user info (a credential) replaced by `…`."""
    if "@" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL urllib can split: all of it before the last "@" may be user info
        return "…@" + url.rpartition("@")[2]
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="…@" + parts.netloc.rpartition("@")[2]))


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
