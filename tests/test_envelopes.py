"""The Event / RawRecord / DeadLetter envelopes and the guarded steps."""

from __future__ import annotations

import json

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.dead_letter import DeadLetter, ErrorCode, dead_letter
from dataflows.errors import guarded_map
from dataflows.events import Event, RawRecord, derive_id, file_event_id, kafka_event_id


def test_event_ids_are_deterministic_and_derived_ids_chain() -> None:
    assert kafka_event_id("orders", 3, 42) == "kafka:orders:3:42"
    assert file_event_id("data/a.jsonl", 7) == "file:data/a.jsonl:7"
    e = Event("k", {"a": 1}, 1000, kafka_event_id("t", 0, 1), "kafka:t")
    d = e.derive("merge", value={"a": 2})
    assert d.event_id == derive_id(e.event_id, "merge") == "kafka:t:0:1/merge"
    assert d.value == {"a": 2} and e.value == {"a": 1}


def test_dead_letter_round_trips_arbitrary_bytes_and_keeps_context() -> None:
    raw = RawRecord(
        payload=b"\xff\xfe not utf8 {",
        event_id="kafka:t:1:9",
        source="kafka:t",
        key=b"\x00k",
        coords={"topic": "t", "partition": 1, "offset": 9},
    )
    try:
        json.loads(raw.payload)
    except Exception as exc:  # noqa: BLE001
        dl = dead_letter(raw, code=ErrorCode.MALFORMED_JSON, stage="orders.parse", pipeline="orders", exc=exc)
    back = DeadLetter.from_json(dl.to_json())
    assert back == dl
    assert back.payload == raw.payload and back.key == b"\x00k"
    assert "Traceback" in back.stacktrace and back.exception_class == "UnicodeDecodeError"
    headers = dict(back.connect_headers())
    assert headers["__connect.errors.topic"] == b"t"
    assert headers["__connect.errors.offset"] == b"9"
    assert headers["__connect.errors.stage"] == b"orders.parse"
    assert headers["__connect.errors.exception.class.name"] == b"UnicodeDecodeError"


def test_dead_letter_of_an_event_keeps_its_value_as_json() -> None:
    e = Event("k1", {"x": [1, 2]}, 5, "file:f:1", "file:f")
    dl = dead_letter(e, code=ErrorCode.USER_FUNCTION, stage="s", pipeline="p", message="boom")
    assert json.loads(dl.payload) == {"x": [1, 2]}
    assert dl.key == b"k1" and dl.error_message == "boom" and dl.event_id == "file:f:1"


class _Coded(Exception):
    error_code = ErrorCode.SCHEMA


def test_guarded_map_routes_failures_to_dlq_and_keeps_going() -> None:
    def fn(x: int):
        if x == 0:
            raise ZeroDivisionError("zero")
        if x == 3:
            raise _Coded("three is not allowed")
        return 10 // x

    flow = Dataflow("g")
    s = op.input("in", flow, TestingSource([1, 0, 2, 3, 5]))
    ok, bad = guarded_map("user", s, fn, pipeline="p")
    good: list = []
    dlq: list[DeadLetter] = []
    op.output("ok", ok, TestingSink(good))
    op.output("bad", bad, TestingSink(dlq))
    run_main(flow)
    assert good == [10, 5, 2]
    assert [(d.error_code, d.payload) for d in dlq] == [
        (ErrorCode.USER_FUNCTION, b"0"),
        (ErrorCode.SCHEMA, b"3"),
    ]
    assert all(d.stage == "g.user" and d.pipeline == "p" for d in dlq)


def _fail_deep(n: int) -> None:
    if n == 0:
        try:
            json.loads("{")
        except ValueError as exc:
            raise ValueError("outer failure") from exc
    _fail_deep(n - 1)


def test_dead_letter_stack_trace_is_complete_without_parsing_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead letter's traceback names every frame (file, line, function, chained cause) but
    never runs Python 3.11's caret-anchor analysis, an `ast.parse` per frame (issue 11: a
    dead letter must not cost 100x an event)."""
    import ast
    import traceback

    parsed: list[str] = []
    real_parse = ast.parse

    def counting_parse(source: str, *args: object, **kwargs: object) -> ast.AST:
        parsed.append(source)
        return real_parse(source, *args, **kwargs)  # type: ignore[arg-type]

    class NoTracebackException:  # building one walks and looks up every frame again
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("TracebackException built")

    try:
        _fail_deep(3)
    except ValueError as exc:
        with monkeypatch.context() as patch:  # undone before pytest formats a failure
            patch.setattr(ast, "parse", counting_parse)
            patch.setattr(traceback, "TracebackException", NoTracebackException)
            dl = dead_letter("x", code=ErrorCode.USER_FUNCTION, stage="s", pipeline="p", exc=exc)
    assert parsed == []
    text = dl.stacktrace
    assert text.startswith("Traceback (most recent call last):\n")
    assert f'File "{__file__}", line' in text and "in _fail_deep" in text
    assert text.count("in _fail_deep") == 1 + 4  # the cause raised in the innermost call
    assert "json.decoder.JSONDecodeError: Expecting property name" in text  # the cause
    assert "direct cause of the following exception" in text
    assert text.rstrip().endswith("ValueError: outer failure")


def test_stack_traces_of_a_repeated_failure_read_each_source_line_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same failure at the same place (a bad record class, thousands of times) formats the
    same frames: each frame's text (file, line, function, source line) is looked up once, and the
    text equals `traceback.format_exception`'s without 3.11's caret lines."""
    import linecache
    import traceback

    lookups: list[tuple[str, int]] = []
    real_getline = linecache.getline

    def counting_getline(filename: str, lineno: int, *args: object) -> str:
        lookups.append((filename, lineno))
        return real_getline(filename, lineno, *args)  # type: ignore[arg-type]

    texts, expected = [], []
    for _ in range(3):
        try:
            _fail_deep(2)
        except ValueError as exc:
            with monkeypatch.context() as patch:
                patch.setattr(linecache, "getline", counting_getline)
                texts.append(dead_letter("x", code=ErrorCode.USER_FUNCTION, stage="s", pipeline="p", exc=exc).stacktrace)
            expected.append("".join(line for line in "".join(traceback.format_exception(exc)).splitlines(True)
                                    if line.strip(" ^~\n") or not line.strip()))
    assert texts[0] == texts[1] == texts[2]
    assert texts == expected
    assert len(lookups) == len(set(lookups)), lookups  # the 2nd and 3rd letter looked up nothing
