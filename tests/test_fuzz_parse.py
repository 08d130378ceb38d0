"""Fuzz: random and mutated records through the parse step and through the running orders flow.

Records are built by hypothesis from good order events, then mutated (bytes flipped,
inserted, deleted, truncated), given values Python's `json` accepts but strict JSON
does not (NaN, Infinity, lone surrogates, huge integers, deep nesting, event times no
datetime holds), or replaced by random bytes. Asserted:

- `parse_record` returns an Event or raises `ParseError` with a known code, nothing else;
  an Event's value is exactly what the bytes say (Python's `json` reads the same) and
  survives the sinks' strict encoding unchanged;
- the orders flow (Bytewax `TestingSource` -> `build_flow` -> `TestingSink`s) never
  crashes, and its table changes plus its dead letters account for every input record,
  each exactly once, with the code the parse step gives it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import orjson
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflows.config import load_config
from dataflows.dead_letter import ErrorCode
from dataflows.events import RawRecord
from dataflows.json_codec import dumps
from dataflows.parse import MAX_EVENT_TIME_MS, MIN_EVENT_TIME_MS, ParseError, parse_record
from dataflows.pipelines import orders
from dataflows.pipelines.common import ParseOptions

REPO = Path(__file__).resolve().parents[1]
CODES = {v for k, v in vars(ErrorCode).items() if k.isupper()}
NASTY: list[Any] = [float("nan"), float("inf"), float("-inf"), "a\ud800", "\udfff", 2**53, -(2**53), 2**64,
                    10**30, [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
                    1e300, -1e20, "", None, True, [1, {"x": "é"}], "0001-01-01T00:00:00-01:00"]
FIELDS = ["order_id", "event_id", "ts", "op", "amount", "status", "extra"]


def order_doc(i: int) -> dict[str, Any]:
    """A good order event; its event id is unique and not one mutation away from another's."""
    tag = hashlib.blake2b(str(i).encode(), digest_size=4).hexdigest()
    return {"order_id": f"o-{i % 7}", "event_id": f"fz-{i:04d}-{tag}", "ts": 1_767_225_600_000 + i,
            "op": ["insert", "update", "delete", "snapshot"][i % 4], "amount": i * 1.5, "status": "new"}


@st.composite
def record_bytes(draw: st.DrawFn, i: int) -> bytes:
    doc = order_doc(i)
    kind = draw(st.sampled_from(["valid", "nasty", "mutated", "mutated", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=80))
    if kind == "nasty":
        doc[draw(st.sampled_from(FIELDS))] = draw(st.sampled_from(NASTY))
    data = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if kind != "mutated":
        return data
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(buf) - 1, 0)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        byte = draw(st.sampled_from(b'{}[]",:\\0123456789eE.-+ \xff\xc3\xed\x00nNaIu'))
        if action == "flip" and buf:
            buf[at] = byte
        elif action == "insert":
            buf.insert(at, byte)
        elif action == "delete" and buf:
            del buf[at]
        elif action == "truncate":
            del buf[at:]
    return bytes(buf)


def options() -> dict[str, Any]:
    opts = ParseOptions.from_config(load_config(REPO / "config" / "orders.yaml", environ={}),
                                    key_field="order_id", op_field="op", id_field="event_id")
    return dict(key_field=opts.key_field, time_field=opts.time_field, op_field=opts.op_field,
                max_record_bytes=opts.max_record_bytes, required={"event_id": str},
                optional=orders.OPTIONAL_TYPES, limits=opts.limits)


OPTS = options()


def raw(i: int, payload: bytes) -> RawRecord:
    return RawRecord(payload, f"fuzz:{i}", "fuzz", coords={"line": i})


def code_of(record: RawRecord) -> str | None:
    """The parse step's verdict: None for an Event, else its error code (checked)."""
    try:
        event = parse_record(record, **OPTS)
    except ParseError as exc:
        assert exc.error_code in CODES
        return exc.error_code
    assert event.value == json.loads(record.payload)  # nothing silently changed ...
    assert orjson.loads(dumps(event.value)) == event.value  # ... and the sinks write it as is
    assert event.key and event.key.encode("utf-8")
    assert MIN_EVENT_TIME_MS <= event.event_time_ms <= MAX_EVENT_TIME_MS
    return None


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 10_000).flatmap(lambda i: record_bytes(i).map(lambda b: (i, b))))
def test_parse_record_returns_an_event_or_a_coded_error(case: tuple[int, bytes]) -> None:
    code_of(raw(*case))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_orders_flow_accounts_for_every_record(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 40))
    records = [raw(i, data.draw(record_bytes(i))) for i in range(n)]
    table: list[Any] = []
    changes: list[Any] = []
    letters: list[Any] = []
    cfg = load_config(REPO / "config" / "orders.yaml", environ={})
    run_main(orders.build_flow(cfg, source=TestingSource(records, batch_size=7), sink=TestingSink(table),
                               dlq_sink=TestingSink(letters), changes_sink=TestingSink(changes)))
    dead = {d.event_id: d for d in letters}
    assert len(dead) == len(letters)  # one dead letter per record at most
    changed = [c.event_id.rsplit("/", 1)[0] for c in table]
    assert len(set(changed)) == len(changed)  # one table change per record at most
    assert not set(changed) & set(dead)
    for record in records:
        code = code_of(record)
        if code is not None:
            assert dead[record.event_id].error_code == code
            assert dead[record.event_id].payload == record.payload
        else:  # every order event here has a unique id and value: one upsert or tombstone each
            assert record.event_id in changed
    assert len(dead) + len(changed) == len(records)
    for letter in letters:
        orjson.loads(letter.to_json())  # the DLQ envelope is strict JSON
