"""Parsing raw records: each bad kind of input lands in the DLQ with full context."""

from __future__ import annotations

import json

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows import metrics
from dataflows.dead_letter import DeadLetter, ErrorCode
from dataflows.events import Event, RawRecord, file_event_id
from dataflows.parse import ParseError, parse_event_time, parse_events, parse_record


def raw(payload: bytes, line: int = 1, ts: int | None = None) -> RawRecord:
    return RawRecord(payload, file_event_id("in.jsonl", line), "file:in.jsonl", timestamp_ms=ts,
                     coords={"path": "in.jsonl", "line": line, "offset": 10 * line})


OPTS = dict(key_field="id", time_field="ts", max_record_bytes=200, op_field="op",
            required={"event_id": str}, optional={"amount": (int, float)})


def test_a_good_record_becomes_an_event_keeping_id_source_and_value() -> None:
    doc = {"id": 7, "ts": "2026-01-01T00:00:01.250Z", "op": "update", "event_id": "e1", "amount": 2}
    e = parse_record(raw(json.dumps(doc).encode(), 3), **OPTS)
    assert e == Event("7", doc, 1_767_225_601_250, "file:in.jsonl:3", "file:in.jsonl", op="update")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01T00:00:00Z", 1_767_225_600_000),
        ("2026-01-01T01:00:00.001+01:00", 1_767_225_600_001),
        ("2026-01-01T00:00:00.123", 1_767_225_600_123),  # naive = UTC
        (1_767_225_600_123, 1_767_225_600_123),
        (1_767_225_600_123.9, 1_767_225_600_123),
    ],
)
def test_event_time_accepts_iso_8601_and_epoch_ms(value: object, expected: int) -> None:
    assert parse_event_time(value) == expected


def test_missing_time_falls_back_to_the_record_timestamp_else_schema() -> None:
    doc = json.dumps({"id": "a", "event_id": "e"}).encode()
    assert parse_record(raw(doc, ts=42), **OPTS).event_time_ms == 42
    with pytest.raises(ParseError) as info:
        parse_record(raw(doc), **OPTS)
    assert info.value.error_code == ErrorCode.SCHEMA and "'ts'" in str(info.value)


CASES = [
    (b'{"id": "a", "ts": 1, "event_id": "e"', ErrorCode.MALFORMED_JSON, "not JSON"),
    (b'{"id": "a\xff\xfe", "ts": 1, "event_id": "e"}', ErrorCode.INVALID_UTF8, "not UTF-8"),
    (b'{"ts": 1, "event_id": "e"}', ErrorCode.MISSING_KEY, "'id'"),
    (b'{"id": "", "ts": 1, "event_id": "e"}', ErrorCode.MISSING_KEY, "'id'"),
    (b'{"id": ["a"], "ts": 1, "event_id": "e"}', ErrorCode.SCHEMA, "string or integer"),
    (b'{"id": true, "ts": 1, "event_id": "e"}', ErrorCode.SCHEMA, "string or integer"),
    (b'{"id": "a", "ts": true, "event_id": "e"}', ErrorCode.SCHEMA, "'ts'"),
    (b'{"id": "a", "ts": "yesterday", "event_id": "e"}', ErrorCode.SCHEMA, "'ts'"),
    (b'{"id": "a", "ts": 1, "event_id": 5}', ErrorCode.SCHEMA, "'event_id' must be str"),
    (b'{"id": "a", "ts": 1}', ErrorCode.SCHEMA, "'event_id' is missing"),
    (b'{"id": "a", "ts": 1, "event_id": "e", "amount": "12"}', ErrorCode.SCHEMA, "'amount'"),
    (b'{"id": "a", "ts": 1, "event_id": "e", "amount": false}', ErrorCode.SCHEMA, "'amount'"),
    (b'{"id": "a", "ts": 1, "event_id": "e", "op": "upsert"}', ErrorCode.SCHEMA, "unknown op"),
    (b'[1, 2]', ErrorCode.SCHEMA, "JSON object"),
    (b'"text"', ErrorCode.SCHEMA, "JSON object"),
    (b'{"id": "a", "ts": 1, "event_id": "e", "pad": "' + b"x" * 200 + b'"}', ErrorCode.OVERSIZED, "limit is 200"),
]


@pytest.mark.parametrize(("payload", "code", "message"), CASES)
def test_each_bad_record_raises_the_right_code(payload: bytes, code: str, message: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_record(raw(payload), **OPTS)
    assert info.value.error_code == code
    assert message in str(info.value)


def test_parse_step_sends_every_bad_record_to_the_dlq_and_keeps_going() -> None:
    good = [json.dumps({"id": f"k{i}", "ts": i, "event_id": f"e{i}"}).encode() for i in range(3)]
    payloads = [good[0], *(c[0] for c in CASES), good[1], good[2]]
    records = [raw(p, i + 1) for i, p in enumerate(payloads)]
    before = metrics.DLQ_EVENTS.labels(pipeline="p", step="t.parse", error_code=ErrorCode.SCHEMA)._value.get()

    flow = Dataflow("t")
    s = op.input("in", flow, TestingSource(records))
    ok, bad = parse_events("parse", s, pipeline="p", **OPTS)
    events: list[Event] = []
    letters: list[DeadLetter] = []
    op.output("ok", ok, TestingSink(events))
    op.output("bad", bad, TestingSink(letters))
    run_main(flow)

    assert [e.key for e in events] == ["k0", "k1", "k2"]
    assert [d.error_code for d in letters] == [c[1] for c in CASES]
    for letter, record, (_, _, message) in zip(letters, records[1:], CASES, strict=False):
        assert letter.payload == record.payload  # original bytes, untouched
        assert letter.stage == "t.parse" and letter.pipeline == "p"
        assert message in letter.error_message
        assert letter.event_id == record.event_id and letter.coords == record.coords
        assert letter.exception_class == "ParseError" and "Traceback" in letter.stacktrace
        assert DeadLetter.from_json(letter.to_json()) == letter
    after = metrics.DLQ_EVENTS.labels(pipeline="p", step="t.parse", error_code=ErrorCode.SCHEMA)._value.get()
    assert after - before == sum(1 for c in CASES if c[1] == ErrorCode.SCHEMA)


@settings(max_examples=150, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["id", "ts", "op", "event_id", "amount"]), c, max_size=5),
                 max_leaves=10).map(lambda v: json.dumps(v).encode()),
))
def test_any_input_becomes_an_event_or_a_coded_parse_error(payload: bytes) -> None:
    try:
        event = parse_record(raw(payload), **OPTS)
    except ParseError as exc:
        assert exc.error_code in {ErrorCode.OVERSIZED, ErrorCode.INVALID_UTF8, ErrorCode.MALFORMED_JSON,
                                  ErrorCode.MISSING_KEY, ErrorCode.SCHEMA, ErrorCode.NON_FINITE_NUMBER,
                                  ErrorCode.LONE_SURROGATE, ErrorCode.INTEGER_OUT_OF_RANGE,
                                  ErrorCode.TOO_DEEP, ErrorCode.EVENT_TIME_OUT_OF_RANGE}
    else:
        assert isinstance(event.value, dict) and event.key == str(event.value["id"])
        assert isinstance(event.event_time_ms, int)
