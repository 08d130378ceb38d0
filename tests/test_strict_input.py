"""Strict input, strict output (issue 11, "Strict input, nothing crashes").

Input that Python's `json` accepts but RFC 8259 / I-JSON (RFC 7493) does not is a dead
letter at parse time, with a code of its own; every sink (file, Kafka, the DLQ envelope)
writes the same strict JSON, checked here with orjson's strict parser (it refuses NaN,
Infinity and lone surrogates, as RFC 8259 §6 / §8.2 consumers may).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from dataflows.connectors.files import JsonlSink, json_line
from dataflows.dead_letter import ErrorCode, dead_letter
from dataflows.events import Event, RawRecord, file_event_id
from dataflows.parse import ParseError, StrictLimits, parse_event_time, parse_record

OPTS: dict[str, Any] = dict(key_field="id", time_field="ts", max_record_bytes=100_000)
GOOD = '"id": "a", "ts": 1'


def raw(payload: bytes, ts: int | None = None) -> RawRecord:
    return RawRecord(payload, file_event_id("in.jsonl", 1), "file:in.jsonl", timestamp_ms=ts)


def deep(n: int) -> str:
    return "[" * n + "]" * n


STRICT_CASES = [
    ("{" + GOOD + ', "x": NaN}', ErrorCode.NON_FINITE_NUMBER, "NaN"),
    ("{" + GOOD + ', "x": [Infinity]}', ErrorCode.NON_FINITE_NUMBER, "Infinity"),
    ("{" + GOOD + ', "x": -Infinity}', ErrorCode.NON_FINITE_NUMBER, "-Infinity"),
    ("{" + GOOD + ', "x": 1e400}', ErrorCode.NON_FINITE_NUMBER, "beyond"),
    ("{" + GOOD + ', "x": "a\\ud800b"}', ErrorCode.LONE_SURROGATE, "U+D800"),
    ("{" + GOOD + ', "\\udfff": 1}', ErrorCode.LONE_SURROGATE, "U+DFFF"),
    ("{" + GOOD + ', "x": 9007199254740992}', ErrorCode.INTEGER_OUT_OF_RANGE, "9007199254740992"),
    ("{" + GOOD + ', "x": {"y": [-9007199254740992]}}', ErrorCode.INTEGER_OUT_OF_RANGE, "2^53"),
    ("{" + GOOD + ', "x": 123456789012345678901234567890}', ErrorCode.INTEGER_OUT_OF_RANGE, "2^53"),
    ('{"id": 9007199254740993, "ts": 1}', ErrorCode.INTEGER_OUT_OF_RANGE, "2^53"),
    ("{" + GOOD + ', "x": ' + "7" * 5000 + "}", ErrorCode.INTEGER_OUT_OF_RANGE, "5000 digits"),
    ("{" + GOOD + ', "x": ' + deep(64) + "}", ErrorCode.TOO_DEEP, "limit is 64"),
    ("{" + GOOD + ', "x": ' + deep(5000) + "}", ErrorCode.TOO_DEEP, "limit is 64"),
    ('{"id": "a", "ts": 1e300}', ErrorCode.EVENT_TIME_OUT_OF_RANGE, "'ts'"),
    ('{"id": "a", "ts": -62135596800001}', ErrorCode.EVENT_TIME_OUT_OF_RANGE, "'ts'"),
    ('{"id": "a", "ts": 253402300800000}', ErrorCode.EVENT_TIME_OUT_OF_RANGE, "'ts'"),
    ('{"id": "a", "ts": "0001-01-01T00:00:00+01:00"}', ErrorCode.EVENT_TIME_OUT_OF_RANGE, "'ts'"),
]


@pytest.mark.parametrize(("text", "code", "message"), STRICT_CASES)
def test_input_python_json_accepts_but_i_json_refuses_is_a_dead_letter(text: str, code: str,
                                                                       message: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_record(raw(text.encode()), **OPTS)
    assert (info.value.error_code, message in str(info.value)) == (code, True), str(info.value)
    assert len(str(info.value)) < 200  # a message, not a copy of the record


def test_a_record_timestamp_out_of_range_is_a_dead_letter_too() -> None:
    with pytest.raises(ParseError) as info:
        parse_record(raw(b'{"id": "a"}', ts=2**62), **OPTS)
    assert info.value.error_code == ErrorCode.EVENT_TIME_OUT_OF_RANGE


@pytest.mark.parametrize("text", [
    "{" + GOOD + ', "x": 9007199254740991, "y": -9007199254740991}',  # +-(2^53 - 1): I-JSON's range
    "{" + GOOD + ', "x": 1e20, "y": 1.5e300, "z": -0.0}',  # floats (not integers) of any finite size
    "{" + GOOD + ', "x": ' + deep(63) + "}",  # the object and 63 arrays: 64 levels
    "{" + GOOD + ', "x": "\\ud83d\\ude00 \\u00e9"}',  # a surrogate *pair* is one scalar value
    '{"id": "a", "ts": "9999-12-31T23:59:59.999Z"}',
    '{"id": "a", "ts": -62135596800000}',
])
def test_strict_json_within_the_limits_is_accepted(text: str) -> None:
    event = parse_record(raw(text.encode()), **OPTS)
    assert event.value == json.loads(text)


def test_the_limits_are_configurable() -> None:
    text = ("{" + GOOD + ', "x": 9223372036854775807, "y": ' + deep(99) + "}").encode()
    with pytest.raises(ParseError):
        parse_record(raw(text), **OPTS)
    wide = StrictLimits(max_depth=100, integers="int64")
    assert parse_record(raw(text), **OPTS, limits=wide).value["x"] == 2**63 - 1
    with pytest.raises(ParseError) as info:
        parse_record(raw(b'{"id": "a", "ts": 1, "x": 9223372036854775808}'), **OPTS, limits=wide)
    assert info.value.error_code == ErrorCode.INTEGER_OUT_OF_RANGE and "2^63" in str(info.value)


def test_parse_options_read_the_limits_from_config() -> None:
    from dataflows.config import Config, ConfigError
    from dataflows.pipelines.common import ParseOptions

    cfg = Config({"limits": {"max-nesting-depth": 10}, "parse": {"integer-range": "int64"}}, "t.yaml")
    options = ParseOptions.from_config(cfg, key_field="id")
    assert options.limits == StrictLimits(max_depth=10, integers="int64")
    assert ParseOptions.from_config(Config({}, "t.yaml"), key_field="id").limits == StrictLimits()
    for bad, key in [({"limits": {"max-nesting-depth": 0}}, "limits.max-nesting-depth"),
                     ({"limits": {"max-nesting-depth": 1001}}, "limits.max-nesting-depth"),
                     ({"parse": {"integer-range": "int32"}}, "parse.integer-range")]:
        with pytest.raises(ConfigError, match=f"^{key}: "):
            ParseOptions.from_config(Config(bad, "t.yaml"), key_field="id")


def test_parse_event_time_refuses_what_no_datetime_holds() -> None:
    assert parse_event_time(253402300799999) == 253402300799999
    for value in (253402300800000, 10**30, -(10**20), 1e300):
        with pytest.raises(ValueError, match="outside the representable range"):
            parse_event_time(value)


# -- every sink writes the same strict JSON -----------------------------------------------

NASTY = {"nan": float("nan"), "inf": float("-inf"), "lone": "a\ud800b", "big": 2**70, "k": {1: (2, 3)}}


def test_the_file_sink_writes_strict_json_for_any_value(tmp_path: Any) -> None:
    """Values that never went through the parse step (a user hook's result, an aggregate that
    overflowed) are still written as strict JSON, and never crash the sink."""
    path = tmp_path / "out.jsonl"
    part = JsonlSink(path).build_part("s", str(path), None)
    part.write_batch([Event("k", NASTY, 1, "e1", "src"), {"plain": 1}])
    part.close()
    lines = path.read_bytes().splitlines()
    docs = [orjson.loads(line) for line in lines]  # strict: raises on NaN / lone surrogates
    assert docs[0]["value"] == {"nan": None, "inf": None, "lone": "a\ufffdb", "big": str(2**70),
                                "k": {"1": [2, 3]}}
    assert docs[1] == {"plain": 1}


def test_kafka_and_file_sinks_encode_a_record_the_same_way() -> None:
    from dataflows.connectors.kafka.common import to_out_message

    item = Event("k", {"a": 1.5, "lone": "\udc00", "nan": float("nan")}, 1, "e1", "src",
                 headers=(("h", b"\xff"),))
    value = to_out_message(item).value
    assert value == json_line(item).encode()
    assert orjson.loads(value)["value"] == {"a": 1.5, "lone": "\ufffd", "nan": None}


def test_the_dead_letter_envelope_is_strict_json_and_keeps_the_bytes() -> None:
    item = RawRecord(b'{"x": NaN, "s": "\\ud800"}\xff', "file:f:1", "file:f",
                     coords={"path": "f\udcff", "line": 1, "weird": float("inf")})
    letter = dead_letter(item, code=ErrorCode.MALFORMED_JSON, stage="s", pipeline="p",
                         message="bad \ud800 text")
    doc = orjson.loads(letter.to_json())  # strict
    assert doc["payload"] == "eyJ4IjogTmFOLCAicyI6ICJcdWQ4MDAiff8="  # base64 of the exact bytes
    assert doc["error_message"] == "bad \ufffd text" and doc["coords"]["weird"] is None


def test_the_dead_letter_of_an_event_holds_strict_json() -> None:
    letter = dead_letter(Event("k", NASTY, 1, "e", "s"), code=ErrorCode.USER_FUNCTION, stage="s",
                         pipeline="p", message="m")
    assert orjson.loads(letter.payload)["lone"] == "a\ufffdb"


def test_the_deepest_allowed_nesting_is_checked_without_recursing() -> None:
    """The walk over a document is iterative: the largest limit, 1000 levels, is above what
    Python's default recursion limit lets a recursive walk reach."""
    limits = StrictLimits(max_depth=1000)
    assert parse_record(raw(("{" + GOOD + ', "x": ' + deep(999) + "}").encode()), **OPTS, limits=limits)
    with pytest.raises(ParseError) as info:
        parse_record(raw(("{" + GOOD + ', "x": ' + deep(1000) + "}").encode()), **OPTS, limits=limits)
    assert info.value.error_code == ErrorCode.TOO_DEEP


def test_a_malformed_record_s_stack_trace_chains_only_the_precise_error() -> None:
    """The dead letter names the JSON error that decides the code (Python's, with its
    position), not also orjson's first refusal (decoding again happens outside its handler)."""
    from dataflows.errors import _to_dead_letter

    with pytest.raises(ParseError) as info:
        parse_record(raw(b'{"id": "a", "ts": 1'), **OPTS)
    letter = _to_dead_letter(raw(b""), info.value, "t.parse", "t")
    assert letter.error_code == ErrorCode.MALFORMED_JSON
    assert "json.decoder.JSONDecodeError: Expecting" in letter.stacktrace
    assert "orjson" not in letter.stacktrace and "During handling" not in letter.stacktrace
