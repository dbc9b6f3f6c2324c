"""User payload mappings: the path parser (valid and invalid specs, with clear errors at parse
time), decoding by a mapping column by column, missing paths as `schema` violations, and random
JSON (and random specs) that never raise."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeltap.protocols import decode_exchange
from modeltap.protocols.detect import DecodeOptions
from modeltap.protocols.mapping import INDEX, KEY, STAR, FieldMapping, FieldPath
from modeltap.protocols.payload import DecodedPayload, ExchangeBytes

EXCHANGE = ExchangeBytes("POST", "/score", b"", b"", 200)


def run(
    spec: dict[str, str], request: Any, response: Any = None, feature_names: tuple[str, ...] = ()
) -> DecodedPayload:
    out = DecodedPayload()
    FieldMapping.parse(spec).decode(request, response, EXCHANGE._replace(feature_names=feature_names), out)
    return out


# --- path parser ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "document", "head", "tail"),
    [
        ("a", None, ((KEY, "a"),), None),
        ("a.b.c", None, ((KEY, "a"), (KEY, "b"), (KEY, "c")), None),
        ("a[0]", None, ((KEY, "a"), (INDEX, 0)), None),
        ("a[12].b", None, ((KEY, "a"), (INDEX, 12), (KEY, "b")), None),
        ("payload.rows[*]", None, ((KEY, "payload"), (KEY, "rows")), ()),
        ("rows[*].x[1]", None, ((KEY, "rows"),), ((KEY, "x"), (INDEX, 1))),
        ('a["x.y"]', None, ((KEY, "a"), (KEY, "x.y")), None),
        ("a['x.y'].b", None, ((KEY, "a"), (KEY, "x.y"), (KEY, "b")), None),
        ('["a b"]', None, ((KEY, "a b"),), None),
        ('a["q\\"uote"]', None, ((KEY, "a"), (KEY, 'q"uote')), None),
        ('a["back\\\\slash"]', None, ((KEY, "a"), (KEY, "back\\slash")), None),
        ('a[""]', None, ((KEY, "a"), (KEY, "")), None),
        ("a:b", None, ((KEY, "a:b"),), None),
        ("t:0", None, ((KEY, "t:0"),), None),
        ("$", None, (), None),
        ("$[*]", None, (), ()),
        ("$.a", None, ((KEY, "a"),), None),
        ("$[0]", None, ((INDEX, 0),), None),
        ("[*]", None, (), ()),
        ("[*][0]", None, (), ((INDEX, 0),)),
        ("request:meta.id", "request", ((KEY, "meta"), (KEY, "id")), None),
        ("response:$", "response", (), None),
        ("response:out[*]", "response", ((KEY, "out"),), ()),
        ("  a.b  ", None, ((KEY, "a"), (KEY, "b")), None),
        ("a-b.c_d.$e@f", None, ((KEY, "a-b"), (KEY, "c_d"), (KEY, "$e@f")), None),
    ],
)
def test_valid_paths(
    text: str, document: str | None, head: tuple[Any, ...], tail: tuple[Any, ...] | None
) -> None:
    path = FieldPath.parse(text)
    assert (path.document, path.head, path.tail) == (document, head, tail)
    assert path.fans_out is (tail is not None)
    assert STAR not in {kind for kind, _ in path.head + (path.tail or ())}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("request:", "empty"),
        (".a", "position 0: unexpected '.'"),
        ("a.", "position 2: expected a key after '.'"),
        ("a..b", "position 2: expected a key after '.'"),
        ("a b", "position 1: expected '.' or '[' before ' '"),
        ("a[", "position 1: unclosed '['"),
        ("a[0", "position 3: expected ']'"),
        ("a[*", "position 3: expected ']'"),
        ("a[]", "position 2: expected an index, '*' or a quoted key"),
        ("a[x]", "position 2: expected an index, '*' or a quoted key"),
        ("a[-1]", "position 2: negative indexes are not supported"),
        ("a[1.5]", "position 3: expected ']'"),
        ('a["x]', "position 2: unterminated quoted key"),
        ('a["x"', "position 5: expected ']'"),
        ('a["x\\n"]', "position 4: a backslash escapes only the quote or a backslash"),
        ("a]", "position 1: expected '.' or '['"),
        ('a"b', "position 1: expected '.' or '['"),
        ('"a"', "position 0: unexpected '\"'"),
        ("$a", "position 1: expected '.' or '['"),
        ("a[*].b[*]", "only one [*]"),
        ("[*][*]", "only one [*]"),
        ("x" * 2000, "longer than"),
        (".".join(["a"] * 100), "more than 64 steps"),
    ],
)
def test_invalid_paths(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"invalid path|longer than") as info:
        FieldPath.parse(text)
    assert message in str(info.value)


def test_parse_builds_every_role() -> None:
    spec = {
        "features": "payload.rows[*]",
        "outputs": "result.scores[*]",
        "model_version": "meta.version",
        "model_name": "response:model",
        "request_id": "meta.id",
        "features.extra": "payload.extra[*]",
        "outputs.a.b": 'result["a.b"]',
    }
    mapping = FieldMapping.parse(spec)
    assert mapping.features == FieldPath.parse("payload.rows[*]")
    assert mapping.outputs == FieldPath.parse("result.scores[*]")
    assert mapping.feature_columns == (("extra", FieldPath.parse("payload.extra[*]")),)
    assert mapping.output_columns == (("a.b", FieldPath.parse('result["a.b"]')),)
    assert mapping.model_name is not None
    assert mapping.model_name.document == "response"
    assert mapping.model_version == FieldPath.parse("meta.version")
    assert mapping.request_id == FieldPath.parse("meta.id")
    # Immutable and comparable: a parsed mapping can key a cache or sit in a frozen config.
    assert mapping == FieldMapping.parse(dict(spec))
    assert hash(mapping) == hash(FieldMapping.parse(dict(spec)))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "empty"),
        ({"feature": "a"}, "'feature' is not one of features, outputs"),
        ({"label": "a"}, "'label' is not one of"),
        ({"model_version.x": "a"}, "'model_version.x' is not one of"),
        ({"features.": "a"}, "names no column"),
        ({"features": ""}, "'features': invalid path '': empty"),
        ({"outputs": "a..b"}, "'outputs': invalid path 'a..b' at position 2"),
        (
            {"model_version": "versions[*]"},
            "'model_version': model_version is a single value, [*] is not allowed",
        ),
        ({"request_id": "ids[*].id"}, "[*] is not allowed"),
        ({"features": 3}, "'features': a path must be a string"),
        ({1: "a"}, "key 1 is not a string"),
        ([("features", "a")], "must be an object"),
        ("features=a", "must be an object"),
    ],
)
def test_invalid_specs_raise_value_error(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match="payload mapping") as info:
        FieldMapping.parse(spec)
    assert message in str(info.value)


# --- decoding ------------------------------------------------------------------------------------

SPEC = {
    "features": "payload.rows[*]",
    "outputs": "result.scores[*]",
    "model_version": "meta.version",
    "request_id": "meta.id",
}


def test_the_documented_example() -> None:
    request = {
        "payload": {"rows": [{"age": 39, "city": "Paris"}, {"age": 52, "city": "Lyon"}]},
        "meta": {"id": "r-1"},
    }
    response = {"result": {"scores": [0.2, 0.9]}, "meta": {"version": "2024-05"}}
    out = run(SPEC, request, response)
    assert out.protocol == "mapping"
    assert out.features == {"age": [39.0, 52.0], "city": ["Paris", "Lyon"]}
    assert out.outputs == {"prediction": [0.2, 0.9]}
    assert (out.rows, out.model_version, out.request_id, out.violations) == (2, "2024-05", "r-1", {})


def test_list_rows_take_reference_names_then_positional() -> None:
    out = run({"features": "rows[*]"}, {"rows": [[1, 2, 3], [4, 5, 6]]}, feature_names=("a", "b"))
    assert out.features == {"a": [1.0, 4.0], "b": [2.0, 5.0], "f2": [3.0, 6.0]}
    out = run({"outputs": "out[*]"}, {}, {"out": [[0.1, 0.9], [0.6, 0.4]]})
    assert out.outputs == {"prediction0": [0.1, 0.6], "prediction1": [0.9, 0.4]}


def test_fan_out_with_a_tail_and_rows_lacking_it() -> None:
    request = {"items": [{"f": {"x": 1}}, {"f": {"x": 2}}, {"g": 0}]}
    out = run({"features": "items[*].f"}, request)
    assert out.features == {"x": [1.0, 2.0, None]}
    assert out.rows == 3
    assert out.violations == {"schema": 1, "missing": 1}


def test_without_fan_out_the_value_is_one_row() -> None:
    assert run({"features": "payload"}, {"payload": {"a": 1, "v": [1, 2]}}).features == {
        "a": [1.0],
        "v[0]": [1.0],
        "v[1]": [2.0],
    }
    assert run({"features": "payload"}, {"payload": [1, 2]}).features == {"f0": [1.0], "f1": [2.0]}
    out = run({"features": "$", "outputs": "$"}, {"a": 1}, 0.5)
    assert (out.features, out.outputs, out.rows) == ({"a": [1.0]}, {"prediction": [0.5]}, 1)


def test_root_fan_out_and_quoted_keys() -> None:
    out = run({"features": "$[*]"}, [{"a.b": 1}, {"a.b": 2}])
    assert out.features == {"a.b": [1.0, 2.0]}
    out = run({"features.ab": '$[*]["a.b"]'}, [{"a.b": 1}, {"a.b": 2}])
    assert out.features == {"ab": [1.0, 2.0]}


def test_named_columns_join_the_rows() -> None:
    spec = {
        "features": "rows[*]",
        "features.age": "ages[*]",
        "features.region": "region",
        "outputs.p": "p[*]",
    }
    request = {"rows": [{"x": 1}, {"x": 2}], "ages": [30, None], "region": "eu"}
    out = run(spec, request, {"p": [0.1, 0.2]})
    assert out.features == {"x": [1.0, 2.0], "age": [30.0, None], "region": ["eu", None]}
    assert out.outputs == {"p": [0.1, 0.2]}
    # age: one null (missing); region: a single value for two rows (schema, padded with missing)
    assert out.violations == {"missing": 2, "schema": 1}


def test_named_columns_alone_are_the_rows() -> None:
    spec = {"features.age": "age[*]", "features.income": "income[*]"}
    out = run(spec, {"age": [30, 40, 50], "income": [1, 2]})
    assert out.features == {"age": [30.0, 40.0, 50.0], "income": [1.0, 2.0, None]}
    assert out.rows == 3
    assert out.violations == {"schema": 1, "missing": 1}


def test_missing_paths_are_schema_violations() -> None:
    out = run(SPEC, {"payload": {}}, {"result": 1})
    assert (out.features, out.outputs, out.rows) == ({}, {}, 0)
    # features and outputs paths absent; model_version and request_id absent from both documents
    assert out.violations == {"schema": 4}
    out = run({"features": "payload.rows[*]"}, {"payload": {"rows": {"a": 1}}})
    assert out.violations == {"schema": 1}  # [*] over something that is not a list
    out = run({"features": "rows[3]"}, {"rows": [1]})
    assert out.violations == {"schema": 1}


def test_sides_that_were_not_captured_are_not_violations() -> None:
    out = run(SPEC, {"payload": {"rows": [[1]]}, "meta": {"id": "x"}}, None)
    assert out.outputs == {}
    assert out.request_id == "x"
    assert out.violations == {"schema": 1}  # only model_version, absent from the request


def test_identity_documents_and_values() -> None:
    request = {"meta": {"id": "req", "version": "v-req"}}
    response = {"meta": {"id": "resp"}}
    out = run({"request_id": "meta.id", "model_version": "meta.version"}, request, response)
    assert (out.request_id, out.model_version, out.violations) == ("resp", "v-req", {})
    out = run({"request_id": "request:meta.id"}, request, response)
    assert out.request_id == "req"
    out = run({"model_name": "response:meta.version"}, request, response)
    assert (out.model_name, out.violations) == (None, {"schema": 1})
    assert run({"request_id": "id"}, {}, {"id": 42}).request_id == "42"
    assert run({"request_id": "id"}, {}, {"id": "a\x00b" + "c" * 300}).request_id == "ab" + "c" * 125
    out = run({"request_id": "id"}, {}, {"id": {"nested": 1}})
    assert (out.request_id, out.violations) == (None, {"type": 1})
    out = run({"request_id": "id"}, {}, {"id": None})
    assert (out.request_id, out.violations) == (None, {})


IDENTITY_SPEC = {
    "features": "payload.rows[*]",
    "outputs": "result.scores[*]",
    "model_name": "meta.model",
    "model_version": "meta.version",
}
URL_NAMED = "/v1/models/churn/versions/7:predict"


def decode_at(path: str, spec: dict[str, str], request: Any, response: Any) -> DecodedPayload:
    """Through detection, so the URL's identity comes first as it does in the pipeline."""
    exchange = ExchangeBytes("POST", path, json.dumps(request).encode(), json.dumps(response).encode(), 200)
    return decode_exchange(exchange, options=DecodeOptions(mapping=FieldMapping.parse(spec)))


def test_identity_paths_that_find_nothing_keep_the_url_identity() -> None:
    """PROTOCOLS.md section 7: the URL comes before the payload; an unresolved path is no claim."""
    request = {"payload": {"rows": [{"a": 1.0}, {"a": 2.0}]}}
    response = {"result": {"scores": [0.1, 0.2]}}
    out = decode_at(URL_NAMED, IDENTITY_SPEC, request, response)
    assert (out.protocol, out.rows, out.outputs) == ("mapping", 2, {"prediction": [0.1, 0.2]})
    assert (out.model_name, out.model_version) == ("churn", "7")
    assert out.violations == {"schema": 2}  # the two identity paths resolved nowhere
    # A value of the wrong kind is no identity either: counted, the URL's stays.
    out = decode_at(URL_NAMED, IDENTITY_SPEC, request, {**response, "meta": {"model": [1], "version": {}}})
    assert (out.model_name, out.model_version, out.violations) == ("churn", "7", {"type": 2})
    # Same as a mapping without identity paths.
    out = decode_at(URL_NAMED, {"features": "payload.rows[*]"}, request, response)
    assert (out.model_name, out.model_version) == ("churn", "7")


def test_identity_paths_that_resolve_fill_in_and_none_is_kept_without_a_url() -> None:
    request = {"payload": {"rows": [{"a": 1.0}]}}
    response = {"result": {"scores": [0.1]}, "meta": {"model": "m", "version": "v3"}}
    out = decode_at("/score", IDENTITY_SPEC, request, response)
    assert (out.model_name, out.model_version, out.violations) == ("m", "v3", {})
    out = decode_at("/score", IDENTITY_SPEC, request, {"result": {"scores": [0.1]}})
    assert (out.model_name, out.model_version) == (None, None)


def test_explicit_documents_for_columns() -> None:
    spec = {"features": "response:echo[*]", "outputs": "request:expected[*]"}
    out = run(spec, {"expected": [1, 0]}, {"echo": [{"a": 1}, {"a": 2}]})
    assert out.features == {"a": [1.0, 2.0]}
    assert out.outputs == {"prediction": [1.0, 0.0]}


def test_values_follow_the_common_rules() -> None:
    request = {"rows": [{"a": float("nan"), "b": {"b64": "eA=="}, "c": {"deep": 1}, "d": True}]}
    out = run({"features": "rows[*]"}, request)
    assert out.features == {"a": [None], "c": [None], "d": [True]}
    assert out.violations == {"missing": 1, "type": 1}


def test_matches() -> None:
    ex = EXCHANGE
    mapping = FieldMapping.parse(SPEC)
    assert mapping.matches(ex, {"payload": {"rows": []}})
    assert not mapping.matches(ex, {"payload": {"rows": {}}})
    assert not mapping.matches(ex, {"other": 1})
    assert not mapping.matches(ex, None)
    named = FieldMapping.parse({"features.a": "x.a"})
    assert named.matches(ex, {"x": {"a": None}})
    assert not named.matches(ex, {"x": {}})
    outputs_only = FieldMapping.parse({"outputs": "y"})
    assert outputs_only.matches(ex, {"anything": 1})
    assert not outputs_only.matches(ex, None)
    response_side = FieldMapping.parse({"features": "response:echo[*]"})
    assert response_side.matches(ex, [1])


# --- never raises --------------------------------------------------------------------------------

KEYS = st.sampled_from(
    ["payload", "rows", "result", "scores", "meta", "version", "id", "a", "x.y"]
) | st.text(max_size=3)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)
MAPPINGS = [
    FieldMapping.parse(SPEC),
    FieldMapping.parse({"features": "$[*]", "outputs": "$", "features.x": 'payload["x.y"][*]'}),
    FieldMapping.parse({"features": "payload.rows[*].a", "outputs.s": "result.scores[0]", "model_name": "a"}),
    FieldMapping.parse({"features": "rows[1]", "outputs": "response:$[*][0]", "request_id": "request:id"}),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(min_value=0, max_value=len(MAPPINGS) - 1), request=JSON, response=JSON)
def test_random_json_never_raises(which: int, request: Any, response: Any) -> None:
    mapping = MAPPINGS[which]
    mapping.matches(EXCHANGE, request)
    out = DecodedPayload()
    mapping.decode(request, response, EXCHANGE, out)
    assert out.protocol == "mapping"
    assert set(out.violations) <= {"missing", "type", "schema"}
    assert all(len(column) == out.rows for column in out.features.values())
    for column in (*out.features.values(), *out.outputs.values()):
        assert all(value is None or isinstance(value, (float, str, bool)) for value in column)


PATH_TEXT = st.text(alphabet=".[]*\"'\\$0123456789abxy: -", max_size=16) | st.sampled_from(
    ["request:", "response:", "$", "[*]"]
).flatmap(lambda prefix: st.text(alphabet=".[]*\"'ab0", max_size=8).map(lambda rest: prefix + rest))
ROLE_KEYS = st.sampled_from(
    ["features", "outputs", "model_name", "model_version", "request_id", "features.c", "x"]
)


@settings(max_examples=300, deadline=None)
@given(spec=st.dictionaries(ROLE_KEYS, PATH_TEXT, max_size=4), request=JSON, response=JSON)
def test_random_specs_parse_or_raise_value_error(spec: dict[str, str], request: Any, response: Any) -> None:
    mapping: FieldMapping | None = None
    error = ""
    try:
        mapping = FieldMapping.parse(spec)
    except ValueError as exc:
        error = str(exc)
    if mapping is None:
        assert error.startswith("payload mapping")
        return
    mapping.matches(EXCHANGE, request)
    mapping.decode(request, response, EXCHANGE, DecodedPayload())
