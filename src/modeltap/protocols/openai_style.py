"""OpenAI-style LLM APIs (PROTOCOLS.md §6): chat completions, completions, the Responses API
(`/v1/responses`) and embeddings, answered as one JSON document or streamed as server-sent events
(`text/event-stream`, `data: {...}` chunks, a final `data: [DONE]`; Responses streams typed events
instead, the last of them `response.completed` with the whole response).

Only lengths, counts and categories become features and outputs, never the text itself: no prompt
or completion content leaves the decoder, whatever the payload-capture setting, which is what
`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=false` asks for (RELIABILITY.md E10).

Columns (one row per request; an embeddings request with a list input has one row per input):

- chat and completions inputs: `prompt_chars`, `messages`, `tools`, `max_tokens`, `temperature`,
  `stream` ("true"/"false"); outputs: `completion_chars`, `prompt_tokens`, `completion_tokens`,
  `total_tokens`, `finish_reason`, `choices`, `tool_calls`, `stream_chunks`. The column set is the
  same for both endpoints, so a model served on both keeps one schema: `messages` and `tools` are
  None for completions, `tool_calls` is None for completions and `stream_chunks` is None for a
  response that was not streamed.
- the Responses API keeps that column set: `prompt_chars` counts `instructions` and the text of
  `input` (a string, or items: message text parts, `function_call_output` outputs), `messages` is
  the number of input items (a string is one), `max_tokens` is `max_output_tokens`; outputs:
  `completion_chars` (the answer's `output_text` parts), token counts from `usage.input_tokens`,
  `output_tokens` and `total_tokens`, `finish_reason` the response `status` ("completed",
  "failed", ...) or, for an incomplete one, `incomplete_details.reason` ("max_output_tokens",
  "content_filter"), `tool_calls` the output items that are tool calls (`function_call`,
  `web_search_call`, ... every `*_call`), `choices` None (a response has one answer). Streamed,
  the terminal event's response (`response.completed`, `.incomplete`, `.failed`) gives all of
  them; a stream cut short keeps the text deltas and the announced tool calls. `stream_chunks`
  counts `response.output_text.delta` and `response.function_call_arguments.delta` events.
- embeddings inputs: `prompt_chars`; outputs: `embedding_norm`, `embedding_dim`, `prompt_tokens`,
  `total_tokens`. Usage is per request, so it goes on the request's first row only.

`completion_chars`, `finish_reason` and `tool_calls` describe choice 0 (for a stream: its text
summed over chunks, the last non-null finish reason). Timing statistics (time to first token,
tokens per second) come from capture times elsewhere; `stream_chunks` counts the data events that
carried content.

Absent optional parameters and an absent `usage` are missing values, not violations. Problems in
the payload are counted violations (`decode_error`, `missing`, `type`, `schema`); the decoder never
raises on bad input.
"""

from __future__ import annotations

import base64
import functools
import math
import re
from collections.abc import Iterator
from typing import Any, TypeGuard

import numpy as np

from modeltap._types import Value
from modeltap.protocols.json_body import BodyError, loads, read_body
from modeltap.protocols.payload import Column, DecodedPayload, ExchangeBytes, count

PROTOCOL = "openai"
CHAT = "chat"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"
RESPONSES = "responses"

# Any prefix: KServe serves these under `/openai/v1/...` (`KSERVE_OPENAI_ROUTE_PREFIX`).
_PATH = re.compile(r"/v1/(chat/completions|completions|embeddings|responses)/?$")
_KINDS = {
    "chat/completions": CHAT,
    "completions": COMPLETIONS,
    "embeddings": EMBEDDINGS,
    "responses": RESPONSES,
}
# Message content parts that carry text: chat's `text`, the Responses API's input and output text.
_CHAT_TEXT = frozenset({"text"})
_RESPONSES_TEXT = frozenset({"input_text", "output_text"})
_CHAT_USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")
_RESPONSES_USAGE = ("input_tokens", "output_tokens", "total_tokens")
# Responses stream events: the ones that end a response (and carry it whole), and the deltas that
# are content (as chat's `delta.content` and `delta.tool_calls`).
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_TEXT_DELTA = "response.output_text.delta"
_CONTENT_DELTAS = frozenset({_TEXT_DELTA, "response.function_call_arguments.delta"})
_SSE_FIELDS = (b"event", b"id", b"retry")
_DONE = b"[DONE]"
# Identifiers and categories are bounded and printable (PROTOCOLS.md §7).
MAX_ID_CHARS = 128

Usage = tuple[Value, Value, Value]


@functools.lru_cache(maxsize=1024)
def path_kind(path: str) -> str | None:
    """The endpoint ("chat", "completions", "embeddings" or "responses") a path names, else None."""
    match = _PATH.search(path.partition("?")[0])
    return None if match is None else _KINDS[match.group(1)]


def matches(exchange: ExchangeBytes, request: Any) -> bool:
    """Whether the exchange is an OpenAI-style call, by path or by the request's shape."""
    if path_kind(exchange.path) is not None:
        return True
    if not isinstance(request, dict) or "model" not in request:
        return False
    return (
        isinstance(request.get("messages"), list)
        or "prompt" in request
        or ("input" in request and "embeddings" in exchange.path)
    )


def decode(exchange: ExchangeBytes, request: Any, out: DecodedPayload, max_decoded_bytes: int) -> None:
    """Fill `out` from the parsed request (None when absent) and the response bytes (2xx only)."""
    out.protocol = PROTOCOL
    violations = out.violations
    kind = _kind(exchange.path, request)
    if request is not None and not isinstance(request, dict):
        count(violations, "type")
        request = None
    if request is not None:
        out.model_name = _ident(request.get("model"), violations)
    body: bytes | None = None
    if 200 <= exchange.status < 300 and exchange.response_body:
        body = read_body(exchange.response_body, exchange.response_content_encoding, max_decoded_bytes, out)
    if kind == EMBEDDINGS:
        _decode_embeddings(request, body, out)
        return
    out.rows = 1
    responses = kind == RESPONSES
    if request is not None:
        out.features = (
            _responses_features(request, violations)
            if responses
            else _generation_features(kind, request, violations)
        )
    if body:
        if _is_sse(exchange.response_content_type, body):
            out.outputs = (
                _responses_stream_outputs(body, out) if responses else _stream_outputs(kind, body, out)
            )
        else:
            try:
                document = loads(body)
            except BodyError as exc:
                count(violations, exc.reason)
                return
            out.outputs = (
                _responses_outputs(document, out) if responses else _response_outputs(kind, document, out)
            )


def _kind(path: str, request: Any) -> str:
    kind = path_kind(path)
    if kind is not None:
        return kind
    if isinstance(request, dict):
        if "messages" in request:
            return CHAT
        if "prompt" in request:
            return COMPLETIONS
        if "input" in request:
            return EMBEDDINGS
    return CHAT


# ---- values ------------------------------------------------------------------------------------


def _ident(value: Any, violations: dict[str, int]) -> str | None:
    """An id, model or category string made printable and bounded; None when absent or empty."""
    if value is None:
        return None
    if not isinstance(value, str):
        count(violations, "type")
        return None
    if len(value) <= MAX_ID_CHARS and value.isprintable():
        return value or None
    cleaned = "".join(ch for ch in value[:MAX_ID_CHARS] if ch.isprintable())
    return cleaned or None


def _number(value: Any, violations: dict[str, int]) -> Value:
    """An optional number: None when absent, non-finite ones missing (PROTOCOLS.md §8)."""
    if value is None:
        return None
    if type(value) is int or type(value) is float:  # not bool
        try:
            number = float(value)
        except OverflowError:  # an integer past float range (the tolerant parse keeps it)
            number = math.inf
        if math.isfinite(number):
            return number
        count(violations, "missing")
        return None
    count(violations, "type")
    return None


def _list_length(value: Any, violations: dict[str, int]) -> Value:
    """Length of an optional list parameter: absent or null is none (0)."""
    if value is None:
        return 0.0
    if isinstance(value, list):
        return float(len(value))
    count(violations, "type")
    return None


def _content_chars(
    content: Any, violations: dict[str, int], text_types: frozenset[str] = _CHAT_TEXT
) -> int | None:
    """Characters of a message `content`: a string, null (tool calls) or a list of parts, of which
    only the text parts (`text_types`) count (images, audio and files have no characters)."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        count(violations, "type")
        return None
    total = 0
    valid = True
    for part in content:
        if not isinstance(part, dict):
            count(violations, "type")
            valid = False
        elif part.get("type") in text_types:
            text = part.get("text")
            if isinstance(text, str):
                total += len(text)
            else:
                count(violations, "missing" if text is None else "type")
                valid = False
    return total if valid else None


# ---- requests ----------------------------------------------------------------------------------


def _generation_features(kind: str, request: dict[str, Any], violations: dict[str, int]) -> dict[str, Column]:
    messages: Value = None
    tools: Value = None
    if kind == CHAT:
        messages, prompt_chars = _messages(request.get("messages"), violations)
        tools = _list_length(request.get("tools", request.get("functions")), violations)
    else:
        prompt_chars = _prompt_chars(request.get("prompt"), violations)
    max_tokens = request.get("max_tokens")
    if max_tokens is None:
        max_tokens = request.get("max_completion_tokens")  # the newer chat name
    return _request_columns(request, prompt_chars, messages, tools, max_tokens, violations)


def _request_columns(
    request: dict[str, Any],
    prompt_chars: Value,
    messages: Value,
    tools: Value,
    max_tokens: Any,
    violations: dict[str, int],
) -> dict[str, Column]:
    """The generation request columns, one schema for every generating endpoint."""
    stream = request.get("stream")
    if stream is None:
        streamed: Value = "false"
    elif isinstance(stream, bool):
        streamed = "true" if stream else "false"
    else:
        count(violations, "type")
        streamed = None
    return {
        "prompt_chars": [prompt_chars],
        "messages": [messages],
        "tools": [tools],
        "max_tokens": [_number(max_tokens, violations)],
        "temperature": [_number(request.get("temperature"), violations)],
        "stream": [streamed],
    }


def _responses_features(request: dict[str, Any], violations: dict[str, int]) -> dict[str, Column]:
    """A Responses API request: `instructions` count as prompt text, as a chat system message."""
    items, chars = _input_items(request.get("input"), violations)
    instructions = request.get("instructions")
    if isinstance(instructions, str):
        chars = None if chars is None else chars + len(instructions)
    elif instructions is not None:
        count(violations, "type")
        chars = None
    tools = _list_length(request.get("tools"), violations)
    prompt_chars = None if chars is None else float(chars)
    return _request_columns(request, prompt_chars, items, tools, request.get("max_output_tokens"), violations)


def _input_items(value: Any, violations: dict[str, int]) -> tuple[Value, int | None]:
    """(number of input items, characters of their text) of a Responses `input`. It is optional
    (a stored conversation or a prompt template may stand in for it): absent is none, not missing."""
    if value is None:
        return 0.0, 0
    if isinstance(value, str):
        return 1.0, len(value)
    if not isinstance(value, list):
        count(violations, "type")
        return None, None
    total: int | None = 0
    for item in value:
        chars = _item_chars(item, violations)
        total = None if chars is None or total is None else total + chars
    return float(len(value)), total


def _item_chars(item: Any, violations: dict[str, int]) -> int | None:
    """Text characters of one input item: a message's content, a tool result's output; other
    items (earlier tool calls, reasoning, references) carry no prompt text of their own."""
    if not isinstance(item, dict):
        count(violations, "type")
        return None
    if "content" in item:
        return _content_chars(item["content"], violations, _RESPONSES_TEXT)
    if item.get("type") == "function_call_output":
        return _content_chars(item.get("output"), violations, _RESPONSES_TEXT)
    return 0


def _messages(messages: Any, violations: dict[str, int]) -> tuple[Value, Value]:
    """(number of messages, characters of their contents); None for what cannot be read."""
    if messages is None:
        count(violations, "missing")
        return None, None
    if not isinstance(messages, list):
        count(violations, "type")
        return None, None
    total = 0
    valid = True
    for message in messages:
        if not isinstance(message, dict):
            count(violations, "type")
            valid = False
            continue
        chars = _content_chars(message.get("content"), violations)
        if chars is None:
            valid = False
        else:
            total += chars
    return float(len(messages)), (float(total) if valid else None)


def _prompt_chars(prompt: Any, violations: dict[str, int]) -> Value:
    """Characters of a completions `prompt`: a string or a list of strings; token-id prompts
    (a list of ints, or of int lists) are valid but have no characters (None)."""
    if prompt is None:
        count(violations, "missing")
        return None
    if isinstance(prompt, str):
        return float(len(prompt))
    if isinstance(prompt, list):
        if all(isinstance(item, str) for item in prompt):
            return float(sum(len(item) for item in prompt))
        if all(type(item) is int or isinstance(item, list) for item in prompt):
            return None
    count(violations, "type")
    return None


def _input_chars(value: Any, violations: dict[str, int]) -> list[Value]:
    """One entry per embeddings input: its characters, or None for a token-id input."""
    if value is None:
        count(violations, "missing")
        return []
    if isinstance(value, str):
        return [float(len(value))]
    if not isinstance(value, list):
        count(violations, "type")
        return []
    if not value:
        count(violations, "missing")
        return []
    if all(type(item) is int for item in value):
        return [None]  # a single input given as token ids
    chars: list[Value] = []
    for item in value:
        if isinstance(item, str):
            chars.append(float(len(item)))
        else:
            if not isinstance(item, list):
                count(violations, "type")
            chars.append(None)
    return chars


# ---- responses ---------------------------------------------------------------------------------


def _usage(usage: Any, violations: dict[str, int], keys: tuple[str, str, str] = _CHAT_USAGE) -> Usage:
    """(prompt, completion, total) tokens; `keys` name them (the Responses API says input/output)."""
    if usage is None:
        return None, None, None
    if not isinstance(usage, dict):
        count(violations, "type")
        return None, None, None
    return (
        _number(usage.get(keys[0]), violations),
        _number(usage.get(keys[1]), violations),
        _number(usage.get(keys[2]), violations),
    )


def _generation_outputs(
    kind: str,
    chars: Value,
    usage: Usage,
    finish_reason: Value,
    choices: Value,
    tool_calls: Value,
    stream_chunks: Value,
) -> dict[str, Column]:
    return {
        "completion_chars": [chars],
        "prompt_tokens": [usage[0]],
        "completion_tokens": [usage[1]],
        "total_tokens": [usage[2]],
        "finish_reason": [finish_reason],
        "choices": [choices],
        "tool_calls": [tool_calls if kind in (CHAT, RESPONSES) else None],
        "stream_chunks": [stream_chunks],
    }


def _first_choice(choices: list[Any]) -> Any:
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index") == 0:
            return choice
    return choices[0]


def _identified(document: Any, out: DecodedPayload) -> TypeGuard[dict[str, Any]]:
    """Whether the answer is an object; if so, its id and model are the exchange's request id
    and the version that answered."""
    violations = out.violations
    if not isinstance(document, dict):
        count(violations, "type")
        return False
    out.request_id = _ident(document.get("id"), violations)
    out.model_version = out.answer_version = _ident(document.get("model"), violations)
    return True


def _response_outputs(kind: str, document: Any, out: DecodedPayload) -> dict[str, Column]:
    """A response that was not streamed: `choices[].message` (chat) or `choices[].text`."""
    violations = out.violations
    if not _identified(document, out):
        return {}
    usage = _usage(document.get("usage"), violations)
    chars: Value = None
    finish_reason: Value = None
    tool_calls: Value = None
    n_choices: Value = None
    choices = document.get("choices")
    if choices is None:
        count(violations, "missing")
    elif not isinstance(choices, list):
        count(violations, "type")
    elif not choices:
        n_choices = 0.0
        count(violations, "missing")
    else:
        n_choices = float(len(choices))
        first = _first_choice(choices)
        if not isinstance(first, dict):
            count(violations, "type")
        else:
            finish_reason = _ident(first.get("finish_reason"), violations)
            if kind == CHAT:
                message = first.get("message")
                if isinstance(message, dict):
                    n = _content_chars(message.get("content"), violations)
                    chars = None if n is None else float(n)
                    tool_calls = _list_length(message.get("tool_calls"), violations)
                else:
                    count(violations, "missing" if message is None else "type")
            else:
                text = first.get("text")
                if isinstance(text, str):
                    chars = float(len(text))
                else:
                    count(violations, "missing" if text is None else "type")
    return _generation_outputs(kind, chars, usage, finish_reason, n_choices, tool_calls, None)


def _is_sse(content_type: str, body: bytes) -> bool:
    kind = content_type.lower()
    if "event-stream" in kind:
        return True
    if "json" in kind:
        return False
    head = body[:64].lstrip()
    # Responses API streams name each event first (`event: response.created`).
    return head.startswith((b"data:", b":", b"event:"))


def _sse_events(body: bytes, violations: dict[str, int]) -> Iterator[tuple[bytes, bool]]:
    """The data of each server-sent event and whether the event was terminated. An unterminated
    last event is a stream cut short (or a capture truncated at its cap), not a payload error."""
    data: list[bytes] = []
    for line in body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        if not line:
            if data:
                yield b"\n".join(data), True
                data = []
            continue
        if line.startswith(b":"):
            continue  # a comment (keep-alive)
        field, _, value = line.partition(b":")
        if field == b"data":
            data.append(value[1:] if value.startswith(b" ") else value)
        elif field not in _SSE_FIELDS:
            count(violations, "schema")
    if data:
        yield b"\n".join(data), False


def _json_events(body: bytes, violations: dict[str, int]) -> Iterator[dict[str, Any]]:
    """A stream's JSON objects up to `[DONE]`: an unreadable event is counted (not one the stream
    was cut in the middle of), one that is not an object is a `type` violation."""
    for data, terminated in _sse_events(body, violations):
        if data.strip() == _DONE:
            return
        try:
            event = loads(data)
        except BodyError as exc:
            if terminated:
                count(violations, exc.reason)
            continue
        if not isinstance(event, dict):
            count(violations, "type")
            continue
        yield event


def _stream_outputs(kind: str, body: bytes, out: DecodedPayload) -> dict[str, Column]:
    """Chunks of `choices[].delta` (chat) or `choices[].text`, possibly a usage chunk with
    `"choices": []`, then `[DONE]`; an interrupted stream just ends."""
    violations = out.violations
    chars = 0
    chars_valid = True
    finish_reason: Value = None
    usage: Usage = (None, None, None)
    indices: set[int] = set()
    calls: set[Any] = set()
    chunks = 0
    for chunk in _json_events(body, violations):
        if out.request_id is None:
            out.request_id = _ident(chunk.get("id"), violations)
        if out.model_version is None:
            out.model_version = out.answer_version = _ident(chunk.get("model"), violations)
        if chunk.get("usage") is not None:
            usage = _usage(chunk["usage"], violations)
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            if choices is not None:
                count(violations, "type")
            elif "usage" not in chunk:
                count(violations, "schema")  # neither choices nor usage: e.g. an error event
            continue
        has_content = False
        for position, choice in enumerate(choices):
            if not isinstance(choice, dict):
                count(violations, "type")
                continue
            index = choice.get("index")
            if type(index) is not int:
                index = position
            indices.add(index)
            piece: Any = None
            tool_deltas: Any = None
            if kind == CHAT:
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    piece = delta.get("content")
                    tool_deltas = delta.get("tool_calls")
                elif delta is not None:
                    count(violations, "type")
            else:
                piece = choice.get("text")
            if isinstance(piece, str):
                if piece:
                    has_content = True
                    if index == 0:
                        chars += len(piece)
            elif piece is not None:
                count(violations, "type")
                if index == 0:
                    chars_valid = False
            if isinstance(tool_deltas, list):
                has_content = has_content or bool(tool_deltas)
                if index == 0:
                    for call in tool_deltas:
                        # A call's first delta has its id; later ones (arguments) only its index.
                        if not isinstance(call, dict):
                            count(violations, "type")
                        elif type(call.get("index")) is int:
                            calls.add(call["index"])
                        elif isinstance(call.get("id"), str):
                            calls.add(call["id"])
            elif tool_deltas is not None:
                count(violations, "type")
            reason = choice.get("finish_reason")
            if reason is not None and index == 0:
                finish_reason = _ident(reason, violations)
        if has_content:
            chunks += 1
    return _generation_outputs(
        kind,
        float(chars) if chars_valid else None,
        usage,
        finish_reason,
        float(len(indices)),
        float(len(calls)),
        float(chunks),
    )


# ---- the Responses API -------------------------------------------------------------------------


def _responses_outputs(document: Any, out: DecodedPayload) -> dict[str, Column]:
    """A Responses API answer that was not streamed: `output` items, `status`, `usage`."""
    if not _identified(document, out):
        return {}
    return _response_columns(document, out.violations, None, None, None)


def _response_columns(
    response: dict[str, Any],
    violations: dict[str, int],
    chars: Value,
    tool_calls: Value,
    stream_chunks: Value,
) -> dict[str, Column]:
    """Columns from a whole response object; its `output` wins over what a stream's deltas said."""
    usage = _usage(response.get("usage"), violations, _RESPONSES_USAGE)
    output = response.get("output")
    if output is None:
        count(violations, "missing")
    elif not isinstance(output, list):
        count(violations, "type")
    else:
        chars, tool_calls = _output_items(output, violations)
    return _generation_outputs(
        RESPONSES, chars, usage, _finish_reason(response, violations), None, tool_calls, stream_chunks
    )


def _output_items(output: list[Any], violations: dict[str, int]) -> tuple[Value, Value]:
    """(characters of the output text, number of tool calls) of a response's `output` items."""
    chars: int | None = 0
    calls = 0
    for item in output:
        if not isinstance(item, dict):
            count(violations, "type")
            chars = None
            continue
        if _is_tool_call(item):
            calls += 1
        elif item.get("type") == "message":
            n = _content_chars(item.get("content"), violations, _RESPONSES_TEXT)
            chars = None if n is None or chars is None else chars + n
    return (None if chars is None else float(chars)), float(calls)


def _is_tool_call(item: dict[str, Any]) -> bool:
    """`function_call`, `web_search_call`, `file_search_call`, `mcp_call`...: the model used a tool."""
    kind = item.get("type")
    return isinstance(kind, str) and kind.endswith("_call")


def _finish_reason(response: dict[str, Any], violations: dict[str, int]) -> Value:
    """The response's `status`; an incomplete one says why in `incomplete_details.reason`."""
    status = _ident(response.get("status"), violations)
    if status != "incomplete":
        return status
    details = response.get("incomplete_details")
    if isinstance(details, dict):
        return _ident(details.get("reason"), violations) or status
    if details is not None:
        count(violations, "type")
    return status


def _responses_stream_outputs(body: bytes, out: DecodedPayload) -> dict[str, Column]:
    """Typed events (`response.created`, `...output_text.delta`, ...); the terminal one carries
    the whole response with its usage. A stream cut short keeps what its deltas said."""
    violations = out.violations
    chars = 0
    chars_valid = True
    calls = 0
    chunks = 0
    final: dict[str, Any] | None = None
    for event in _json_events(body, violations):
        kind = event.get("type")
        response = event.get("response")
        if not isinstance(kind, str) or kind == "error":
            count(violations, "schema")  # an untyped event, or the stream's error event
        elif isinstance(response, dict):
            _stream_identity(response, out)
            if kind in _TERMINAL:
                final = response
        elif kind in _TERMINAL:
            count(violations, "missing" if response is None else "type")
        elif kind in _CONTENT_DELTAS:
            delta = event.get("delta")
            if not isinstance(delta, str):
                count(violations, "type")
                chars_valid = chars_valid and kind != _TEXT_DELTA
            elif delta:
                chunks += 1
                if kind == _TEXT_DELTA:
                    chars += len(delta)
        elif kind == "response.output_item.added":
            item = event.get("item")
            if isinstance(item, dict) and _is_tool_call(item):
                calls += 1  # announced once per item; the terminal response recounts them
    streamed_chars: Value = float(chars) if chars_valid else None
    if final is None:
        return _generation_outputs(
            RESPONSES, streamed_chars, (None, None, None), None, None, float(calls), float(chunks)
        )
    return _response_columns(final, violations, streamed_chars, float(calls), float(chunks))


def _stream_identity(response: dict[str, Any], out: DecodedPayload) -> None:
    """The response id and model, from the first event that carries the response object."""
    if out.request_id is None:
        out.request_id = _ident(response.get("id"), out.violations)
    if out.model_version is None:
        out.model_version = out.answer_version = _ident(response.get("model"), out.violations)


# ---- embeddings --------------------------------------------------------------------------------


def _decode_embeddings(request: dict[str, Any] | None, body: bytes | None, out: DecodedPayload) -> None:
    violations = out.violations
    chars = _input_chars(request.get("input"), violations) if request is not None else []
    data: list[Any] | None = None
    usage: Usage = (None, None, None)
    if body:
        try:
            document = loads(body)
        except BodyError as exc:
            count(violations, exc.reason)
            document = None
        if isinstance(document, dict):
            out.model_version = out.answer_version = _ident(document.get("model"), violations)
            out.request_id = _ident(document.get("id"), violations)
            usage = _usage(document.get("usage"), violations)
            found = document.get("data")
            if isinstance(found, list):
                data = found
            else:
                count(violations, "missing" if found is None else "type")
        elif document is not None:
            count(violations, "type")
    rows = len(chars) if chars else (len(data) if data is not None else 0)
    out.rows = rows
    if not rows:
        return
    if request is not None:
        out.features = {"prompt_chars": chars if len(chars) == rows else [None] * rows}
    if data is None:
        return
    if len(data) != rows:
        count(violations, "schema")
    norms: Column = [None] * rows
    dims: Column = [None] * rows
    filled = [False] * rows
    for position, item in enumerate(data):
        if not isinstance(item, dict):
            count(violations, "type")
            continue
        # `index` says which input an embedding belongs to; fall back to the position.
        slot = item.get("index")
        if type(slot) is not int or not 0 <= slot < rows or filled[slot]:
            slot = position
            if slot >= rows or filled[slot]:
                continue
        filled[slot] = True
        norms[slot], dims[slot] = _embedding(item.get("embedding"), violations)
    prompt_tokens: Column = [None] * rows
    total_tokens: Column = [None] * rows
    prompt_tokens[0], total_tokens[0] = usage[0], usage[2]
    out.outputs = {
        "embedding_norm": norms,
        "embedding_dim": dims,
        "prompt_tokens": prompt_tokens,
        "total_tokens": total_tokens,
    }


def _embedding(value: Any, violations: dict[str, int]) -> tuple[Value, Value]:
    """(L2 norm, dimension) of a list of floats or of `encoding_format: base64` (float32 LE)."""
    if value is None:
        count(violations, "missing")
        return None, None
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:  # binascii.Error, or non-ASCII text
            count(violations, "decode_error")
            return None, None
        if len(raw) % 4:
            count(violations, "decode_error")
            return None, None
        vector = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    elif isinstance(value, list):
        if value and isinstance(value[0], (list, dict)):
            count(violations, "type")
            return None, None
        try:
            array = np.asarray(value)
        except (ValueError, TypeError, OverflowError):  # ragged or odd elements
            count(violations, "type")
            return None, None
        if array.ndim != 1 or array.dtype.kind not in "fiu":
            count(violations, "type")
            return None, None
        vector = array.astype(np.float64)
    else:
        count(violations, "type")
        return None, None
    dim = float(vector.size)
    if not vector.size:
        count(violations, "schema")
        return None, dim
    if not np.isfinite(vector).all():
        count(violations, "missing")
        return None, dim
    with np.errstate(over="ignore"):
        norm = float(np.sqrt(np.dot(vector, vector)))
        if not math.isfinite(norm):  # squares past float range: scale first
            scale = float(np.abs(vector).max())
            scaled = vector / scale
            norm = scale * float(np.sqrt(np.dot(scaled, scaled)))
    return norm, dim
