"""OpenAI-style decoder (PROTOCOLS.md §6-§8): fixtures written from the API reference shapes decode to
exact lengths, counts and categories; bad payloads become counted violations, never exceptions; no
prompt or completion text reaches the columns (RELIABILITY.md E10)."""

from __future__ import annotations

import base64
import gzip
import json
import math
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeltap.protocols import decode_exchange, openai_style
from modeltap.protocols.payload import DecodedPayload, ExchangeBytes
from modeltap.protocols.routes import Route, protocol_route

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "protocols" / "openai"
FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))
REASONS = {"decode_error", "missing", "type", "schema"}
LIMIT = 1 << 20
GENERATION_FEATURES = {"prompt_chars", "messages", "tools", "max_tokens", "temperature", "stream"}
GENERATION_OUTPUTS = {
    "completion_chars",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "finish_reason",
    "choices",
    "tool_calls",
    "stream_chunks",
}


def make_exchange(
    path: str,
    request: Any,
    response_body: bytes,
    content_type: str = "application/json",
    status: int = 200,
    encoding: str = "",
) -> ExchangeBytes:
    return ExchangeBytes(
        method="POST",
        path=path,
        request_body=b"" if request is None else orjson.dumps(request),
        response_body=response_body,
        status=status,
        response_content_encoding=encoding,
        request_content_type="application/json",
        response_content_type=content_type,
    )


def run(
    path: str,
    request: Any,
    response: Any = None,
    *,
    body: bytes | None = None,
    content_type: str = "application/json",
    status: int = 200,
    encoding: str = "",
    limit: int = LIMIT,
) -> DecodedPayload:
    if body is None:
        body = b"" if response is None else orjson.dumps(response)
    out = DecodedPayload()
    exchange = make_exchange(path, request, body, content_type, status, encoding)
    openai_style.decode(exchange, request, out, limit)
    return out


def sse(*events: Any) -> bytes:
    """`data: <event>` blocks as a server writes them: JSON chunks, or a literal string."""
    return b"".join(
        b"data: " + (event.encode() if isinstance(event, str) else orjson.dumps(event)) + b"\n\n"
        for event in events
    )


def load_fixture(path: Path) -> dict[str, Any]:
    fixture: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return fixture


def fixture_body(fixture: dict[str, Any]) -> bytes:
    if "response_events" in fixture:
        tail: str = fixture.get("response_tail", "")
        return sse(*fixture["response_events"]) + tail.encode()
    return orjson.dumps(fixture["response"])


# ---- fixtures ----------------------------------------------------------------------------------


def test_fixtures_are_present_and_name_their_source() -> None:
    assert len(FIXTURE_FILES) >= 7
    for path in FIXTURE_FILES:
        assert "PROTOCOLS.md §6" in load_fixture(path)["_source"], path.name


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_fixture_decodes_to_exact_values(path: Path) -> None:
    fixture = load_fixture(path)
    request = fixture["request"]
    exchange = make_exchange(
        fixture["path"], request, fixture_body(fixture), fixture["response_content_type"]
    )
    assert openai_style.matches(exchange, request)
    out = DecodedPayload()
    openai_style.decode(exchange, request, out, LIMIT)
    expected = fixture["expected"]
    assert out.protocol == "openai"
    assert out.rows == expected["rows"]
    assert out.features == expected["features"]
    assert out.outputs == expected["outputs"]
    assert (out.model_name, out.model_version, out.request_id) == (
        expected["model_name"],
        expected["model_version"],
        expected["request_id"],
    )
    assert out.violations == expected["violations"]


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_no_prompt_or_completion_text_reaches_the_columns(path: Path) -> None:
    """E10: only numbers and fixed categories leave the decoder, whatever the payload says."""
    fixture = load_fixture(path)
    out = run(
        fixture["path"],
        fixture["request"],
        body=fixture_body(fixture),
        content_type=fixture["response_content_type"],
    )
    strings = {
        value
        for columns in (out.features, out.outputs)
        for column in columns.values()
        for value in column
        if isinstance(value, str)
    }
    assert strings <= {"true", "false", "stop", "length", "tool_calls", "content_filter"}


# ---- matching ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/openai/v1/chat/completions",
        "/serving/ns/llm/openai/v1/completions",
        "/v1/embeddings",
        "/v1/embeddings/",
        "/v1/chat/completions?api-version=2024-06-01",
    ],
)
def test_matches_by_path_whatever_the_body(path: str) -> None:
    assert openai_style.matches(make_exchange(path, None, b""), None)


@pytest.mark.parametrize(
    ("path", "request_doc", "expected"),
    [
        ("/generate", {"model": "m", "messages": []}, True),
        ("/generate", {"model": "m", "prompt": "x"}, True),
        ("/embed", {"model": "m", "input": ["x"]}, False),
        ("/api/embeddings", {"model": "m", "input": ["x"]}, True),
        ("/generate", {"messages": []}, False),
        ("/generate", {"model": "m", "messages": "hi"}, False),
        ("/v1/models/m:predict", {"instances": [[1.0]]}, False),
        ("/v1/chat/completions/extra", {"instances": [[1.0]]}, False),
        ("/predict", [1, 2], False),
        ("/predict", None, False),
    ],
)
def test_matches_by_request_shape(path: str, request_doc: Any, expected: bool) -> None:
    assert openai_style.matches(make_exchange(path, request_doc, b""), request_doc) is expected


def test_kind_follows_the_body_when_the_path_says_nothing() -> None:
    out = run("/generate", {"model": "m", "prompt": "abc"}, {"choices": [{"index": 0, "text": "xy"}]})
    assert out.features["prompt_chars"] == [3.0]
    assert out.features["messages"] == [None]
    assert out.outputs["completion_chars"] == [2.0]
    out = run("/embed", {"model": "m", "input": "abcd"}, {"data": [{"index": 0, "embedding": [3, 4]}]})
    assert out.features == {"prompt_chars": [4.0]}
    assert out.outputs["embedding_norm"] == [5.0]


# ---- requests ----------------------------------------------------------------------------------

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"


def test_messages_not_a_list_is_a_type_violation() -> None:
    out = run(CHAT, {"model": "m", "messages": "hello"})
    assert out.features["messages"] == [None]
    assert out.features["prompt_chars"] == [None]
    assert out.violations == {"type": 1}
    assert out.rows == 1
    assert out.outputs == {}


def test_content_an_int_is_a_type_violation_and_leaves_prompt_chars_unknown() -> None:
    out = run(CHAT, {"model": "m", "messages": [{"role": "user", "content": 7}, {"content": "abc"}]})
    assert out.features["messages"] == [2.0]
    assert out.features["prompt_chars"] == [None]
    assert out.violations == {"type": 1}


def test_bad_message_and_part_shapes_are_counted() -> None:
    messages = [
        "not a message",
        {"role": "user", "content": [{"type": "text", "text": 5}, "part", {"type": "text"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    out = run(CHAT, {"model": "m", "messages": messages})
    assert out.features["messages"] == [3.0]
    assert out.features["prompt_chars"] == [None]
    assert out.violations == {"type": 3, "missing": 1}


def test_missing_messages_and_prompt_are_missing() -> None:
    assert run(CHAT, {"model": "m"}).violations == {"missing": 1}
    assert run(COMPLETIONS, {"model": "m"}).violations == {"missing": 1}


def test_parameter_types() -> None:
    request: dict[str, Any] = {
        "model": 3,
        "messages": [],
        "max_tokens": "many",
        "temperature": True,
        "stream": "yes",
        "tools": {"a": 1},
    }
    out = run(CHAT, request)
    assert out.features == {
        "prompt_chars": [0.0],
        "messages": [0.0],
        "tools": [None],
        "max_tokens": [None],
        "temperature": [None],
        "stream": [None],
    }
    assert out.model_name is None
    assert out.violations == {"type": 5}


def test_null_parameters_are_absent_not_violations() -> None:
    request: dict[str, Any] = {
        "model": "m",
        "messages": [],
        "max_tokens": None,
        "temperature": None,
        "stream": None,
    }
    out = run(CHAT, request)
    assert out.features["max_tokens"] == [None]
    assert out.features["temperature"] == [None]
    assert out.features["stream"] == ["false"]
    assert out.violations == {}


@pytest.mark.parametrize(
    ("prompt", "chars", "violations"),
    [
        ("hello", 5.0, {}),
        (["ab", "cde"], 5.0, {}),
        ([], 0.0, {}),
        ([1, 2, 3], None, {}),  # token ids: valid, no characters
        ([[1, 2], [3]], None, {}),
        (["ab", 3], None, {"type": 1}),
        (12, None, {"type": 1}),
    ],
)
def test_completions_prompt_forms(prompt: Any, chars: float | None, violations: dict[str, int]) -> None:
    out = run(COMPLETIONS, {"model": "m", "prompt": prompt})
    assert out.features["prompt_chars"] == [chars]
    assert out.violations == violations


def test_request_that_is_not_an_object_is_a_type_violation() -> None:
    out = run(CHAT, [1, 2], {"choices": [{"index": 0, "message": {"content": "ok"}}]})
    assert out.violations == {"type": 1}
    assert out.features == {}
    assert out.outputs["completion_chars"] == [2.0]


def test_no_request_still_reads_the_response() -> None:
    out = run(
        CHAT, None, {"id": "c1", "model": "snap", "choices": [{"index": 0, "message": {"content": "x"}}]}
    )
    assert out.rows == 1
    assert out.features == {}
    assert (out.request_id, out.model_version, out.model_name) == ("c1", "snap", None)
    assert out.violations == {}


def test_identifiers_are_sanitised_and_bounded() -> None:
    out = run(
        CHAT,
        {"model": "m\x00odel\n", "messages": []},
        {"id": "x" * 500, "model": "v\x1b1", "choices": [{"index": 0, "message": {"content": ""}}]},
    )
    assert out.model_name == "model"
    assert out.model_version == "v1"
    assert out.request_id == "x" * openai_style.MAX_ID_CHARS


# ---- non-streamed responses ----------------------------------------------------------------------


def test_non_2xx_decodes_the_request_only() -> None:
    out = run(CHAT, {"model": "m", "messages": []}, {"error": {"message": "bad"}}, status=400)
    assert out.outputs == {}
    assert out.features["messages"] == [0.0]
    assert out.violations == {}


def test_malformed_json_response_is_a_decode_error() -> None:
    out = run(CHAT, {"model": "m", "messages": []}, body=b'{"choices": [')
    assert out.violations == {"decode_error": 1}
    assert out.outputs == {}


def test_response_shape_violations() -> None:
    request = {"model": "m", "messages": []}
    assert run(CHAT, request, [1]).violations == {"type": 1}
    assert run(CHAT, request, {"error": {"message": "x"}}).violations == {"missing": 1}
    assert run(CHAT, request, {"choices": {"0": 1}}).violations == {"type": 1}
    out = run(CHAT, request, {"choices": []})
    assert out.outputs["choices"] == [0.0]
    assert out.violations == {"missing": 1}
    assert run(CHAT, request, {"choices": [3]}).violations == {"type": 1}
    assert run(CHAT, request, {"choices": [{"index": 0}]}).violations == {"missing": 1}
    out = run(CHAT, request, {"choices": [{"index": 0, "message": {"content": 5}, "finish_reason": 1}]})
    assert out.outputs["completion_chars"] == [None]
    assert out.violations == {"type": 2}
    out = run(COMPLETIONS, {"model": "m", "prompt": ""}, {"choices": [{"index": 0, "text": ["a"]}]})
    assert out.violations == {"type": 1}


def test_choice_zero_is_found_by_index() -> None:
    response = {
        "choices": [
            {"index": 1, "message": {"content": "second"}, "finish_reason": "length"},
            {"index": 0, "message": {"content": "first!"}, "finish_reason": "stop"},
        ]
    }
    out = run(CHAT, {"model": "m", "messages": [], "n": 2}, response)
    assert out.outputs["completion_chars"] == [6.0]
    assert out.outputs["finish_reason"] == ["stop"]
    assert out.outputs["choices"] == [2.0]


def test_usage_values() -> None:
    request = {"model": "m", "messages": []}
    choices = [{"index": 0, "message": {"content": ""}}]
    out = run(CHAT, request, {"choices": choices, "usage": {"prompt_tokens": "9", "total_tokens": 4}})
    assert out.outputs["prompt_tokens"] == [None]
    assert out.outputs["completion_tokens"] == [None]
    assert out.outputs["total_tokens"] == [4.0]
    assert out.violations == {"type": 1}
    assert run(CHAT, request, {"choices": choices, "usage": 3}).violations == {"type": 1}


def test_non_finite_usage_is_missing_not_a_decode_error() -> None:
    """PROTOCOLS.md §8: NaN/Infinity tokens take the tolerant parse and count as missing."""
    body = (
        b'{"choices": [{"index": 0, "message": {"content": "a"}}],'
        b' "usage": {"prompt_tokens": NaN, "total_tokens": Infinity, "completion_tokens": 1e999}}'
    )
    out = run(CHAT, {"model": "m", "messages": [], "temperature": math.inf}, body=body)
    assert out.outputs["prompt_tokens"] == [None]
    assert out.outputs["total_tokens"] == [None]
    assert out.outputs["completion_tokens"] == [None]
    assert out.features["temperature"] == [None]
    assert out.violations == {"missing": 4}


def test_gzip_response_and_content_coding_errors() -> None:
    request = {"model": "m", "messages": []}
    payload = orjson.dumps({"choices": [{"index": 0, "message": {"content": "abc"}}]})
    out = run(CHAT, request, body=gzip.compress(payload), encoding="gzip")
    assert out.outputs["completion_chars"] == [3.0]
    assert out.violations == {}
    out = run(CHAT, request, body=payload, encoding="br")
    assert out.violations == {"decode_error": 1}
    assert out.outputs == {}
    assert out.features["messages"] == [0.0]
    out = run(CHAT, request, body=gzip.compress(payload), encoding="gzip", limit=10)
    assert out.skipped == "body_too_large"
    assert out.violations == {}


# ---- streams -----------------------------------------------------------------------------------


def chunk(content: str | None = None, finish: str | None = None, index: int = 0) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "s1",
        "object": "chat.completion.chunk",
        "model": "snap",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


STREAM_REQUEST = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_malformed_sse_data_is_a_decode_error_and_the_rest_still_counts() -> None:
    body = sse(chunk("ab"), "{not json", chunk("cd"), chunk(None, "stop"), "[DONE]")
    out = run(CHAT, STREAM_REQUEST, body=body, content_type="text/event-stream")
    assert out.violations == {"decode_error": 1}
    assert out.outputs["completion_chars"] == [4.0]
    assert out.outputs["stream_chunks"] == [2.0]
    assert out.outputs["finish_reason"] == ["stop"]


def test_sse_framing_comments_fields_and_line_endings() -> None:
    body = (
        b": keep-alive\r\n\r\n"
        b"event: message\r\nid: 1\r\nretry: 100\r\n"
        b"data:" + orjson.dumps(chunk("abc")) + b"\r\n\r\n"
        b"data: " + orjson.dumps(chunk("de")) + b"\r\rdata: [DONE]\n\n"
        b"data: " + orjson.dumps(chunk("ignored after done")) + b"\n\n"
    )
    out = run(CHAT, STREAM_REQUEST, body=body, content_type="text/event-stream")
    assert out.violations == {}
    assert out.outputs["completion_chars"] == [5.0]
    assert out.outputs["stream_chunks"] == [2.0]


def test_unknown_sse_line_is_a_schema_violation() -> None:
    body = b"garbage line\n\n" + sse(chunk("ab"), "[DONE]")
    out = run(CHAT, STREAM_REQUEST, body=body, content_type="text/event-stream")
    assert out.violations == {"schema": 1}
    assert out.outputs["completion_chars"] == [2.0]


def test_stream_chunk_shape_violations() -> None:
    body = sse(
        [1, 2],
        {"error": {"message": "overloaded"}},
        {"choices": 3},
        {"choices": ["x", {"index": 0, "delta": 5}, {"index": 0, "delta": {"content": 9, "tool_calls": 1}}]},
        chunk("ok"),
        "[DONE]",
    )
    out = run(CHAT, STREAM_REQUEST, body=body, content_type="text/event-stream")
    assert out.violations == {"type": 6, "schema": 1}
    assert out.outputs["completion_chars"] == [None]
    assert out.outputs["stream_chunks"] == [1.0]


def test_stream_is_recognised_without_a_content_type() -> None:
    body = sse(chunk("abc"), chunk(None, "length"))
    out = run(CHAT, STREAM_REQUEST, body=body, content_type="")
    assert out.outputs["completion_chars"] == [3.0]
    assert out.outputs["finish_reason"] == ["length"]
    assert out.outputs["prompt_tokens"] == [None]
    assert (out.request_id, out.model_version) == ("s1", "snap")


def test_stream_with_several_choices_describes_choice_zero() -> None:
    body = sse(chunk("aaaa", index=1), chunk("bb", index=0), chunk(None, "stop", 0), chunk(None, "length", 1))
    out = run(CHAT, STREAM_REQUEST, body=body, content_type="text/event-stream")
    assert out.outputs["completion_chars"] == [2.0]
    assert out.outputs["finish_reason"] == ["stop"]
    assert out.outputs["choices"] == [2.0]
    assert out.outputs["stream_chunks"] == [2.0]


def test_completions_stream() -> None:
    events = [
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": "m1",
            "choices": [{"index": 0, "text": "Hel", "finish_reason": None}],
        },
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": "m1",
            "choices": [{"index": 0, "text": "lo", "finish_reason": "stop"}],
        },
        {
            "id": "cmpl-1",
            "choices": [],
            "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
        },
        "[DONE]",
    ]
    out = run(
        COMPLETIONS,
        {"model": "m", "prompt": "x", "stream": True},
        body=sse(*events),
        content_type="text/event-stream",
    )
    assert out.outputs == {
        "completion_chars": [5.0],
        "prompt_tokens": [2.0],
        "completion_tokens": [2.0],
        "total_tokens": [4.0],
        "finish_reason": ["stop"],
        "choices": [1.0],
        "tool_calls": [None],
        "stream_chunks": [2.0],
    }
    assert out.violations == {}


# ---- embeddings --------------------------------------------------------------------------------


def test_single_string_input_is_one_row() -> None:
    response = {
        "data": [{"index": 0, "embedding": [0.6, 0.8]}],
        "model": "e",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    out = run(EMBEDDINGS, {"model": "e", "input": "hello"}, response)
    assert out.rows == 1
    assert out.features == {"prompt_chars": [5.0]}
    assert out.outputs["embedding_norm"] == [pytest.approx(1.0)]
    assert out.outputs["embedding_dim"] == [2.0]
    assert out.outputs["prompt_tokens"] == [2.0]


def test_base64_embeddings() -> None:
    vector = base64.b64encode(struct.pack("<4f", 2.0, 3.0, 6.0, 0.0)).decode()
    out = run(
        EMBEDDINGS,
        {"model": "e", "input": ["a"], "encoding_format": "base64"},
        {"data": [{"index": 0, "embedding": vector}]},
    )
    assert out.outputs["embedding_norm"] == [7.0]
    assert out.outputs["embedding_dim"] == [4.0]
    out = run(
        EMBEDDINGS,
        {"model": "e", "input": ["a", "b"]},
        {"data": [{"index": 0, "embedding": "!!"}, {"index": 1, "embedding": "AAA="}]},
    )
    assert out.outputs["embedding_norm"] == [None, None]
    assert out.violations == {"decode_error": 2}


def test_token_id_inputs() -> None:
    out = run(EMBEDDINGS, {"model": "e", "input": [1, 2, 3]}, {"data": [{"index": 0, "embedding": [1.0]}]})
    assert out.rows == 1
    assert out.features == {"prompt_chars": [None]}
    out = run(EMBEDDINGS, {"model": "e", "input": [[1, 2], "ab", 3.5]})
    assert out.features == {"prompt_chars": [None, 2.0, None]}
    assert out.violations == {"type": 1}


def test_embedding_violations() -> None:
    data = [
        {"index": 0, "embedding": ["1", "2"]},
        {"index": 1, "embedding": [1.0, None]},
        {"index": 2, "embedding": [[1.0], [2.0]]},
        {"index": 3, "embedding": []},
        {"index": 4},
        {"index": 5, "embedding": {"x": 1}},
        {"index": 6, "embedding": [1.0, [2.0]]},
        "x",
    ]
    out = run(EMBEDDINGS, {"model": "e", "input": ["a"] * 8}, {"data": data})
    assert out.outputs["embedding_norm"] == [None] * 8
    assert out.outputs["embedding_dim"] == [None, None, None, 0.0, None, None, None, None]
    assert out.violations == {"type": 6, "schema": 1, "missing": 1}


def test_non_finite_and_huge_embedding_values() -> None:
    body = b'{"data": [{"index": 0, "embedding": [1.0, NaN]}, {"index": 1, "embedding": [1e200, 1e200]}]}'
    out = run(EMBEDDINGS, {"model": "e", "input": ["a", "b"]}, body=body)
    assert out.outputs["embedding_norm"][0] is None
    assert out.outputs["embedding_norm"][1] == pytest.approx(math.sqrt(2) * 1e200)
    assert out.outputs["embedding_dim"] == [2.0, 2.0]
    assert out.violations == {"missing": 1}


def test_embedding_count_mismatch_is_a_schema_violation() -> None:
    out = run(
        EMBEDDINGS,
        {"model": "e", "input": ["a", "b", "c"]},
        {"data": [{"index": 0, "embedding": [3.0, 4.0]}]},
    )
    assert out.rows == 3
    assert out.outputs["embedding_norm"] == [5.0, None, None]
    assert out.violations == {"schema": 1}


def test_embeddings_without_usable_input_take_rows_from_the_response() -> None:
    data = [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [2.0]}]
    out = run(EMBEDDINGS, {"model": "e"}, {"data": data})
    assert out.rows == 2
    assert out.features == {"prompt_chars": [None, None]}
    assert out.outputs["embedding_norm"] == [1.0, 2.0]
    assert out.violations == {"missing": 1}
    out = run(EMBEDDINGS, {"model": "e", "input": []}, {"data": "x"})
    assert out.rows == 0
    assert out.violations == {"missing": 1, "type": 1}


def test_embeddings_response_violations() -> None:
    request = {"model": "e", "input": "a"}
    assert run(EMBEDDINGS, request, body=b"data: x").violations == {"decode_error": 1}
    assert run(EMBEDDINGS, request, [1]).violations == {"type": 1}
    assert run(EMBEDDINGS, request, {"object": "list"}).violations == {"missing": 1}


# ---- the Responses API -------------------------------------------------------------------------

SECRET = "My SSN is 078-05-1120, summarise my account"
RESPONSES_REQUEST = {
    "model": "gpt-4o-mini",
    "input": SECRET,
    "instructions": "be brief",
    "max_output_tokens": 256,
    "temperature": 0.2,
}
RESPONSES_ANSWER: dict[str, Any] = {
    "id": "resp_1",
    "object": "response",
    "model": "gpt-4o-mini-2024-07-18",
    "status": "completed",
    "output": [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok, fine"}]},
    ],
    "usage": {"input_tokens": 20, "output_tokens": 3, "total_tokens": 23},
}


def responses_outputs(**values: Any) -> dict[str, list[Any]]:
    """The generation output columns of one Responses answer: `choices` never applies."""
    columns: dict[str, list[Any]] = {name: [None] for name in GENERATION_OUTPUTS}
    columns.update({name: [value] for name, value in values.items()})
    return columns


@pytest.mark.parametrize("path", [RESPONSES, "/openai/v1/responses", "/v1/responses/"])
def test_responses_path_is_recognised(path: str) -> None:
    assert openai_style.path_kind(path) == openai_style.RESPONSES
    assert openai_style.matches(make_exchange(path, None, b""), None)


def test_responses_route_template() -> None:
    """A fixed span name and an inference call (an empty body is an error), as for chat."""
    assert protocol_route("/openai/v1/responses") == Route("/openai/v1/responses", True)
    assert protocol_route("/v1/responses/") == Route("/v1/responses", True)


def test_other_responses_routes_are_not_generation_calls() -> None:
    for path in ("/v1/responses/resp_1", "/v1/responses/resp_1/cancel", "/v1/responses/input_tokens"):
        assert openai_style.path_kind(path) is None


def test_responses_answer_decodes_to_exact_values() -> None:
    out = run(RESPONSES, RESPONSES_REQUEST, RESPONSES_ANSWER)
    assert (out.protocol, out.rows) == ("openai", 1)
    assert out.features == {
        "prompt_chars": [float(len(SECRET) + len("be brief"))],
        "messages": [1.0],
        "tools": [0.0],
        "max_tokens": [256.0],
        "temperature": [0.2],
        "stream": ["false"],
    }
    assert out.outputs == responses_outputs(
        completion_chars=8.0,
        prompt_tokens=20.0,
        completion_tokens=3.0,
        total_tokens=23.0,
        finish_reason="completed",
        tool_calls=0.0,
    )
    assert (out.model_name, out.model_version, out.answer_version, out.request_id) == (
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
        "gpt-4o-mini-2024-07-18",
        "resp_1",
    )
    assert out.violations == {}


def test_responses_through_detection_keep_the_prompt_out_of_the_columns() -> None:
    exchange = make_exchange(RESPONSES, RESPONSES_REQUEST, orjson.dumps(RESPONSES_ANSWER))
    out = decode_exchange(exchange)
    assert (out.protocol, out.model_name, out.answer_version) == (
        "openai",
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
    )
    assert set(out.features) == GENERATION_FEATURES
    values = {value for column in (*out.features.values(), *out.outputs.values()) for value in column}
    assert not {SECRET, "be brief", "ok, fine", "gpt-4o-mini"} & values


def test_responses_input_items() -> None:
    request = {
        "model": "m",
        "instructions": "sys",
        "input": [
            {"role": "developer", "content": "abcd"},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "hello"},
                    {"type": "input_image", "image_url": "https://x/y.png"},
                ],
            },
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {"type": "item_reference", "id": "msg_0"},
        ],
        "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}],
        "stream": False,
    }
    out = run(RESPONSES, request)
    assert out.features == {
        "prompt_chars": [3.0 + 4 + 5 + 2 + 2],
        "messages": [6.0],
        "tools": [2.0],
        "max_tokens": [None],
        "temperature": [None],
        "stream": ["false"],
    }
    assert (out.outputs, out.violations) == ({}, {})
    # `input` is optional (a stored conversation or a prompt template stands in): not missing.
    out = run(RESPONSES, {"model": "m", "previous_response_id": "resp_0"})
    assert (out.features["prompt_chars"], out.features["messages"], out.violations) == ([0.0], [0.0], {})


def test_responses_request_violations() -> None:
    out = run(RESPONSES, {"model": "m", "input": 7, "instructions": "x"})
    assert (out.features["prompt_chars"], out.features["messages"], out.violations) == (
        [None],
        [None],
        {"type": 1},
    )
    out = run(
        RESPONSES, {"model": "m", "input": ["x", {"content": [{"type": "input_text"}]}], "instructions": 3}
    )
    assert (out.features["prompt_chars"], out.features["messages"]) == ([None], [2.0])
    assert out.violations == {"type": 2, "missing": 1}


def test_responses_tool_calls_and_finish_reasons() -> None:
    answer = {
        **RESPONSES_ANSWER,
        "output": [
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {
                "type": "message",
                "content": [{"type": "output_text", "text": "abc"}, {"type": "refusal", "refusal": "no"}],
            },
        ],
    }
    out = run(RESPONSES, RESPONSES_REQUEST, answer)
    assert (out.outputs["tool_calls"], out.outputs["completion_chars"]) == ([2.0], [3.0])
    incomplete: dict[str, Any] = {
        **answer,
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
    }
    assert run(RESPONSES, RESPONSES_REQUEST, incomplete).outputs["finish_reason"] == ["max_output_tokens"]
    incomplete["incomplete_details"] = None
    assert run(RESPONSES, RESPONSES_REQUEST, incomplete).outputs["finish_reason"] == ["incomplete"]
    failed = {**answer, "status": "failed", "output": [], "usage": None, "error": {"code": "server_error"}}
    out = run(RESPONSES, RESPONSES_REQUEST, failed)
    assert out.outputs == responses_outputs(completion_chars=0.0, finish_reason="failed", tool_calls=0.0)
    assert out.violations == {}


def test_responses_answer_violations() -> None:
    assert run(RESPONSES, RESPONSES_REQUEST, [1]).violations == {"type": 1}
    out = run(RESPONSES, RESPONSES_REQUEST, {"id": "r", "status": "completed", "output": {"x": 1}})
    assert (out.outputs["completion_chars"], out.violations) == ([None], {"type": 1})
    out = run(RESPONSES, RESPONSES_REQUEST, {"id": "r", "status": "completed"})
    assert out.violations == {"missing": 1}
    out = run(
        RESPONSES, RESPONSES_REQUEST, {**RESPONSES_ANSWER, "output": [3], "usage": {"input_tokens": "x"}}
    )
    assert (out.outputs["completion_chars"], out.outputs["prompt_tokens"]) == ([None], [None])
    assert out.violations == {"type": 2}


def typed_events(*events: dict[str, Any]) -> bytes:
    """Responses API stream framing: an `event:` line naming each `data:` event's type."""
    return b"".join(
        b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n" for event in events
    )


CREATED = {k: v for k, v in RESPONSES_ANSWER.items() if k not in ("output", "usage")}
STREAM_EVENTS = (
    {"type": "response.created", "response": {**CREATED, "status": "in_progress", "output": []}},
    {"type": "response.output_item.added", "output_index": 0, "item": {"type": "function_call", "id": "fc"}},
    {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": '{"q":'},
    {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": ""},
    {"type": "response.output_item.added", "output_index": 1, "item": {"type": "message", "content": []}},
    {"type": "response.content_part.added", "output_index": 1, "part": {"type": "output_text", "text": ""}},
    {"type": "response.output_text.delta", "output_index": 1, "delta": "ok, "},
    {"type": "response.output_text.delta", "output_index": 1, "delta": "fine"},
)
COMPLETED = {
    "type": "response.completed",
    "response": {
        **RESPONSES_ANSWER,
        "output": [{"type": "function_call", "id": "fc"}, *RESPONSES_ANSWER["output"]],
    },
}


def test_responses_stream() -> None:
    body = typed_events(*STREAM_EVENTS, COMPLETED)
    out = run(RESPONSES, {**RESPONSES_REQUEST, "stream": True}, body=body, content_type="text/event-stream")
    assert out.features["stream"] == ["true"]
    assert out.outputs == responses_outputs(
        completion_chars=8.0,
        prompt_tokens=20.0,
        completion_tokens=3.0,
        total_tokens=23.0,
        finish_reason="completed",
        tool_calls=1.0,
        stream_chunks=3.0,
    )
    assert (out.model_version, out.answer_version, out.request_id) == (
        "gpt-4o-mini-2024-07-18",
        "gpt-4o-mini-2024-07-18",
        "resp_1",
    )
    assert out.violations == {}


def test_responses_stream_cut_short_keeps_what_the_deltas_said() -> None:
    out = run(RESPONSES, RESPONSES_REQUEST, body=typed_events(*STREAM_EVENTS), content_type="")
    assert out.outputs == responses_outputs(completion_chars=8.0, tool_calls=1.0, stream_chunks=3.0)
    assert (out.request_id, out.answer_version, out.violations) == ("resp_1", "gpt-4o-mini-2024-07-18", {})


def test_responses_stream_violations() -> None:
    body = typed_events(
        {"type": "response.output_text.delta", "delta": 5},
        {"type": "error", "code": "server_error", "message": "boom"},
        {"type": "response.failed"},
    ) + sse({"no": "type"}, [1])
    out = run(RESPONSES, RESPONSES_REQUEST, body=body, content_type="text/event-stream")
    assert out.outputs == responses_outputs(tool_calls=0.0, stream_chunks=0.0)
    assert out.violations == {"type": 2, "schema": 2, "missing": 1}


# ---- properties --------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(
    [
        "model",
        "messages",
        "prompt",
        "input",
        "content",
        "choices",
        "delta",
        "message",
        "text",
        "index",
        "usage",
        "finish_reason",
        "tool_calls",
        "data",
        "embedding",
        "tools",
        "stream",
        "id",
        "type",
        "output",
        "status",
        "response",
        "instructions",
        "incomplete_details",
        "reason",
        "item",
    ]
)
# JSON biased towards the keys the decoder reads, so the random documents reach deep branches.
SHAPED = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=30,
)
PATHS = st.sampled_from(
    [CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, "/openai/v1/chat/completions", "/generate"]
)


def check_invariants(out: DecodedPayload) -> None:
    assert out.protocol == "openai"
    assert set(out.violations) <= REASONS
    assert all(n > 0 for n in out.violations.values())
    for columns in (out.features, out.outputs):
        for column in columns.values():
            assert len(column) == out.rows
            for value in column:
                assert value is None or isinstance(value, (str, float))
                assert not isinstance(value, float) or math.isfinite(value)
    if out.features and out.rows == 1:
        assert set(out.features) == GENERATION_FEATURES or set(out.features) == {"prompt_chars"}
    if out.outputs and "completion_chars" in out.outputs:
        assert set(out.outputs) == GENERATION_OUTPUTS


def encode(document: Any) -> bytes:
    return json.dumps(document, allow_nan=True).encode()


@settings(max_examples=300, deadline=None)
@given(PATHS, SHAPED | JSON, SHAPED | JSON)
def test_random_json_never_raises(path: str, request: Any, response: Any) -> None:
    exchange = make_exchange(path, None, encode(response))
    openai_style.matches(exchange, request)
    out = DecodedPayload()
    openai_style.decode(exchange, request, out, LIMIT)
    check_invariants(out)


SSE_LINE = st.one_of(
    st.just(""),
    st.just("data: [DONE]"),
    st.just(": ping"),
    st.text(max_size=20),
    st.builds(lambda d: "data: " + json.dumps(d, allow_nan=True), SHAPED),
    st.builds(lambda d: "data: " + json.dumps({"choices": [d]}, allow_nan=True), SHAPED),
    st.builds(
        lambda t, d: "data: " + json.dumps({"type": t, "response": d, "delta": d}, allow_nan=True),
        st.sampled_from(["response.completed", "response.output_text.delta", "error"]),
        SHAPED,
    ),
    st.builds(lambda t: "data: " + t, st.text(max_size=20)),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES]),
    st.lists(SSE_LINE, max_size=12),
    st.sampled_from(["\n", "\r\n", "\r", "\n\n"]),
    st.sampled_from(["text/event-stream", ""]),
)
def test_random_sse_never_raises(path: str, lines: list[str], newline: str, content_type: str) -> None:
    body = newline.join(lines).encode("utf-8", "surrogatepass")
    out = run(path, STREAM_REQUEST, body=body, content_type=content_type)
    check_invariants(out)


@settings(max_examples=200, deadline=None)
@given(PATHS, st.binary(max_size=200), st.sampled_from(["", "gzip", "deflate", "identity"]))
def test_random_bytes_never_raise(path: str, body: bytes, encoding: str) -> None:
    out = run(path, {"model": "m", "messages": [], "input": "x"}, body=body, encoding=encoding)
    check_invariants(out)
