"""Parse raw JSON records into Events; bad records become dead letters.

`parse_record` is the pure function (RawRecord -> Event, or a `ParseError`
carrying an `ErrorCode`); `parse_events` wires it into a dataflow as a guarded
step, so a bad record never crashes the flow and never disappears: it lands
in the DLQ stream with its original bytes, code, message and stack trace, and
counts in `dlq_event_count`.

Checks, in order (the first failing one decides the code):

1. `OVERSIZED`      payload longer than `max_record_bytes`
2. `INVALID_UTF8`   payload is not UTF-8
3. `MALFORMED_JSON` payload is not JSON
4. `SCHEMA`         JSON is not an object
5. `MISSING_KEY`    key field absent, null or empty
6. `SCHEMA`         key not a string / integer; event time unparsable; op
                    unknown; a `required` field missing or of the wrong type;
                    an `optional` field present with the wrong type

Event time: the `time_field` holds an ISO-8601 string (`Z` or an offset;
a naive time is taken as UTC) or a number of milliseconds since the epoch.
When `time_field` is None or the field is absent, the record's own timestamp
(`RawRecord.timestamp_ms`, e.g. the Kafka message time) is used; a record
without either is a `SCHEMA` dead letter (file records carry no timestamp).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.dataflow import Stream

from dataflows.dead_letter import ErrorCode
from dataflows.errors import Guarded, guarded_map
from dataflows.events import Event, RawRecord

__all__ = ["OPS", "ParseError", "TypeSpec", "parse_event_time", "parse_events", "parse_record"]

OPS = ("insert", "update", "replace", "delete", "snapshot", "generation")
TypeSpec = type | tuple[type, ...]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ParseError(ValueError):
    """A record that cannot become an Event; `error_code` is an `ErrorCode`."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


def parse_event_time(value: Any) -> int:
    """ISO-8601 string or epoch milliseconds -> epoch milliseconds (UTC)."""
    if isinstance(value, bool):
        raise ValueError(f"expected an ISO-8601 time or epoch milliseconds, got {value!r}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"event time is not finite: {value!r}")
        return int(value)
    if isinstance(value, str):
        dt = datetime.fromisoformat(value)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return (dt - _EPOCH) // timedelta(milliseconds=1)
    raise ValueError(f"expected an ISO-8601 time or epoch milliseconds, got {type(value).__name__}")


def _type_ok(value: Any, spec: TypeSpec) -> bool:
    types = spec if isinstance(spec, tuple) else (spec,)
    if isinstance(value, bool) and bool not in types:
        return False  # True is an int in Python, never in a schema
    return isinstance(value, types)


def _type_name(spec: TypeSpec) -> str:
    types = spec if isinstance(spec, tuple) else (spec,)
    return " or ".join(t.__name__ for t in types)


def _decode(raw: RawRecord, max_record_bytes: int) -> dict[str, Any]:
    if len(raw.payload) > max_record_bytes:
        raise ParseError(
            ErrorCode.OVERSIZED,
            f"record is {len(raw.payload)} bytes, limit is {max_record_bytes}",
        )
    try:
        text = raw.payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(ErrorCode.INVALID_UTF8, f"payload is not UTF-8: {exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(ErrorCode.MALFORMED_JSON, f"payload is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ParseError(ErrorCode.SCHEMA, f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _key(doc: Mapping[str, Any], key_field: str) -> str:
    key = doc.get(key_field)
    if key is None or key == "":
        raise ParseError(ErrorCode.MISSING_KEY, f"key field {key_field!r} is missing or empty")
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise ParseError(
            ErrorCode.SCHEMA,
            f"key field {key_field!r} must be a string or integer, got {type(key).__name__}",
        )
    return str(key)


def _event_time(doc: Mapping[str, Any], time_field: str | None, raw: RawRecord) -> int:
    if time_field is not None and doc.get(time_field) is not None:
        try:
            return parse_event_time(doc[time_field])
        except ValueError as exc:
            raise ParseError(ErrorCode.SCHEMA, f"time field {time_field!r}: {exc}") from exc
    if raw.timestamp_ms is not None:
        return raw.timestamp_ms
    raise ParseError(
        ErrorCode.SCHEMA, f"time field {time_field!r} is missing and the record has no timestamp"
    )


def _op(doc: Mapping[str, Any], op_field: str | None) -> str | None:
    if op_field is None or doc.get(op_field) is None:
        return None
    op = doc[op_field]
    if op not in OPS:
        raise ParseError(ErrorCode.SCHEMA, f"op field {op_field!r}: unknown op {op!r}")
    return str(op)


def _check_fields(
    doc: Mapping[str, Any],
    required: Mapping[str, TypeSpec] | None,
    optional: Mapping[str, TypeSpec] | None,
) -> None:
    for name, spec in (required or {}).items():
        if doc.get(name) is None:
            raise ParseError(ErrorCode.SCHEMA, f"required field {name!r} is missing")
        if not _type_ok(doc[name], spec):
            raise ParseError(
                ErrorCode.SCHEMA,
                f"field {name!r} must be {_type_name(spec)}, got {type(doc[name]).__name__}",
            )
    for name, spec in (optional or {}).items():
        if doc.get(name) is not None and not _type_ok(doc[name], spec):
            raise ParseError(
                ErrorCode.SCHEMA,
                f"field {name!r} must be {_type_name(spec)}, got {type(doc[name]).__name__}",
            )


def parse_record(
    raw: RawRecord,
    *,
    key_field: str,
    time_field: str | None,
    max_record_bytes: int,
    op_field: str | None = None,
    required: Mapping[str, TypeSpec] | None = None,
    optional: Mapping[str, TypeSpec] | None = None,
) -> Event:
    """One RawRecord -> Event; raises `ParseError` (with `error_code`) on bad input.

    The Event keeps the record's event id, source and headers; its value is
    the decoded JSON object.
    """
    doc = _decode(raw, max_record_bytes)
    key = _key(doc, key_field)
    _check_fields(doc, required, optional)
    return Event(
        key=key,
        value=doc,
        event_time_ms=_event_time(doc, time_field, raw),
        event_id=raw.event_id,
        source=raw.source,
        op=_op(doc, op_field),
        headers=raw.headers,
    )


class _Parser:
    """The mapper of `parse_events`: `parse_record` with its options bound."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def __call__(self, raw: RawRecord) -> Event:
        return parse_record(raw, **self.options)


def parse_events(
    step_id: str,
    up: Stream[RawRecord],
    *,
    pipeline: str,
    key_field: str,
    time_field: str | None,
    max_record_bytes: int,
    op_field: str | None = None,
    required: Mapping[str, TypeSpec] | None = None,
    optional: Mapping[str, TypeSpec] | None = None,
) -> Guarded:
    """Parse JSON records.

    Emits `ok`: an `Event` per good record (same event id as the record);
    `dlq`: a `DeadLetter` per bad record (stage = this step id, code as in
    the module docstring, original bytes and coordinates kept). Stateless.

    A plain function over the guarded step, so the dead letters' stage is
    exactly the flow-scoped `step_id` (e.g. `orders.parse`).
    """
    parser = _Parser(
        key_field=key_field,
        time_field=time_field,
        max_record_bytes=max_record_bytes,
        op_field=op_field,
        required=required,
        optional=optional,
    )
    return guarded_map(step_id, up, parser, pipeline=pipeline)
