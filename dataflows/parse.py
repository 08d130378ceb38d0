"""Parse raw JSON records into Events; bad records become dead letters.

`parse_record` is the pure function (RawRecord -> Event, or a `ParseError`
carrying an `ErrorCode`); `BatchParser` runs it over a batch of source items
(what `dataflows.flow.parse_events` and the pipelines' `ingest` run per batch,
`flat_map_batch`), so a bad record never crashes the flow and never disappears: it lands
in the DLQ stream with its original bytes, code, message and stack trace, and
counts in `dlq_event_count`.

Checks, in order (the first failing one decides the code):

1. `OVERSIZED`      payload longer than `max_record_bytes`
2. `INVALID_UTF8`   payload is not UTF-8
3. `MALFORMED_JSON` payload is not JSON (RFC 8259; a UTF-8 BOM included)
4. strict JSON: what Python's `json` accepts but RFC 8259 / I-JSON (RFC 7493)
   consumers may refuse, anywhere in the document (keys included):
   `NON_FINITE_NUMBER`     `NaN`, `Infinity`, `-Infinity`, or a number too
                           large for a double (`1e400`)
   `LONE_SURROGATE`        a string escape that is not a Unicode scalar
                           value (`"\ud800"` without its pair)
   `INTEGER_OUT_OF_RANGE`  an integer beyond +-(2^53 - 1), what every I-JSON
                           consumer holds exactly (JavaScript, doubles);
                           `parse.integer-range: int64` widens it to
                           [-2^63, 2^63 - 1] (BSON int64, Java long)
   `TOO_DEEP`              more nested objects / arrays than
                           `limits.max-nesting-depth` (default 64; the
                           top-level object is level 1; at most 1000)
5. `SCHEMA`         JSON is not an object
6. `MISSING_KEY`    key field absent, null or empty
7. `SCHEMA`         key not a string / integer; event time unparsable; op
                    unknown; a `required` field missing or of the wrong type;
                    an `optional` field present with the wrong type
8. `EVENT_TIME_OUT_OF_RANGE`  the event time (the field, or the record's
                    timestamp) is outside what a datetime holds: years 1 to
                    9999 UTC, `MIN_EVENT_TIME_MS` .. `MAX_EVENT_TIME_MS`

Decoding is orjson (strict RFC 8259 itself); only a record it refuses is
decoded again with Python's `json` to name the precise code, so good records
pay one fast parse and a walk of the document for the integer and depth
limits.

Event time: the `time_field` holds an ISO-8601 string (`Z` or an offset;
a naive time is taken as UTC) or a number of milliseconds since the epoch.
When `time_field` is None or the field is absent, the record's own timestamp
(`RawRecord.timestamp_ms`, e.g. the Kafka message time) is used; a record
without either is a `SCHEMA` dead letter (file records carry no timestamp).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from dataflows.dead_letter import DeadLetter, ErrorCode
from dataflows.events import Event, RawRecord
from dataflows.records import frozen_factory

__all__ = [
    "MAX_EVENT_TIME_MS",
    "MIN_EVENT_TIME_MS",
    "OPS",
    "BatchParser",
    "EventTimeRangeError",
    "ParseError",
    "StrictLimits",
    "TypeSpec",
    "decode_strict",
    "parse_event_time",
    "parse_record",
]

OPS = ("insert", "update", "replace", "delete", "snapshot", "generation")
TypeSpec = type | tuple[type, ...]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_EVENT_TIME_MS = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
MAX_EVENT_TIME_MS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
INTEGER_RANGES = {"i-json": (-(2**53 - 1), 2**53 - 1, "+-(2^53 - 1)"),
                  "int64": (-(2**63), 2**63 - 1, "[-2^63, 2^63 - 1]")}
MAX_NESTING_DEPTH = 1000  # orjson refuses deeper documents (1024) before any check of ours


@dataclass(frozen=True)
class StrictLimits:
    """The strict-JSON limits of the parse step (module docstring, check 4).

    `integers`: `i-json` (+-(2^53 - 1), default) or `int64`.
    """

    max_depth: int = 64
    integers: str = "i-json"

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= MAX_NESTING_DEPTH:
            raise ValueError(f"max_depth must be 1..{MAX_NESTING_DEPTH}, got {self.max_depth}")
        if self.integers not in INTEGER_RANGES:
            raise ValueError(f"integers must be one of {', '.join(INTEGER_RANGES)}, got {self.integers!r}")


_DEFAULT_LIMITS = StrictLimits()
_event = frozen_factory(Event)  # Event(...) without the frozen dataclass's per-field setattr


class ParseError(ValueError):
    """A record that cannot become an Event; `error_code` is an `ErrorCode`."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class EventTimeRangeError(ValueError):
    """An event time no datetime holds (before year 1 or after 9999, UTC)."""


def _brief(n: int) -> str:
    """An integer for a message: in full when short, else its first digits and length."""
    digits = str(abs(n))
    if len(digits) <= 24:
        return str(n)
    return f"{'-' if n < 0 else ''}{digits[:8]}...({len(digits)} digits)"


def _in_range(ms: int) -> int:
    if not MIN_EVENT_TIME_MS <= ms <= MAX_EVENT_TIME_MS:
        raise EventTimeRangeError(
            f"{_brief(ms)} ms is outside the representable range {MIN_EVENT_TIME_MS}..{MAX_EVENT_TIME_MS}"
            " (years 1 to 9999 UTC)")
    return ms


def parse_event_time(value: Any) -> int:
    """ISO-8601 string or epoch milliseconds -> epoch milliseconds (UTC).

    ValueError if unparsable; `EventTimeRangeError` (a ValueError) if outside
    `MIN_EVENT_TIME_MS` .. `MAX_EVENT_TIME_MS`.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected an ISO-8601 time or epoch milliseconds, got {value!r}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"event time is not finite: {value!r}")
        return _in_range(int(value))
    if isinstance(value, str):
        dt = datetime.fromisoformat(value)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        td = dt - _EPOCH  # exact integer arithmetic (no float seconds)
        return _in_range(td.days * 86_400_000 + td.seconds * 1000 + td.microseconds // 1000)
    raise ValueError(f"expected an ISO-8601 time or epoch milliseconds, got {type(value).__name__}")


def _type_ok(value: Any, spec: TypeSpec) -> bool:
    types = spec if isinstance(spec, tuple) else (spec,)
    if isinstance(value, bool) and bool not in types:
        return False  # True is an int in Python, never in a schema
    return isinstance(value, types)


def _exact_types(spec: TypeSpec) -> frozenset[type]:
    """The types `_type_ok` passes by their exact type (no subclasses; bool only if named)."""
    return frozenset(spec if isinstance(spec, tuple) else (spec,))


def _type_name(spec: TypeSpec) -> str:
    types = spec if isinstance(spec, tuple) else (spec,)
    return " or ".join(t.__name__ for t in types)


class _Suspect(Exception):
    """orjson turned an integer literal beyond 64 bits into a float: re-read exactly."""


class _Walk:
    """Checks a decoded document against the limits (raises ParseError).

    `exact`: the document came from Python's `json` (the slow path), whose strings
    may hold lone surrogates and floats infinity; from orjson neither can occur,
    but an integer literal beyond 64 bits arrives as an integral float (`_Suspect`).
    """

    __slots__ = ("max_depth", "lo", "hi", "spelled", "exact")

    def __init__(self, limits: StrictLimits, exact: bool) -> None:
        self.max_depth = limits.max_depth
        self.lo, self.hi, self.spelled = INTEGER_RANGES[limits.integers]
        self.exact = exact

    def check(self, doc: Any) -> None:
        """The whole document (the top-level value is level 1), walked without recursion."""
        if type(doc) is not dict and type(doc) is not list:
            self.scalar(doc)
            return
        exact = self.exact
        if not exact and type(doc) is dict and self._flat_ok(doc):
            return
        todo: list[tuple[Any, int]] = [(doc, 1)]
        while todo:
            node, depth = todo.pop()
            if depth > self.max_depth:
                raise ParseError(ErrorCode.TOO_DEEP, f"JSON nesting is deeper than {self.max_depth} "
                                 f"levels: limit is {self.max_depth}")
            if type(node) is dict:
                if exact:
                    for k in node:
                        self.scalar(k)
                values: Any = node.values()
            else:
                values = node
            for v in values:
                t = type(v)
                if t is dict or t is list:
                    todo.append((v, depth + 1))
                elif t is int or t is float or (exact and t is str):
                    self.scalar(v)

    def _flat_ok(self, doc: dict[str, Any]) -> bool:
        """The common case from orjson, fast: every value a string, bool, None, an integer in
        range or a float far from 2^63 (False: walk it properly)."""
        lo, hi = self.lo, self.hi
        for v in doc.values():
            t = type(v)
            if t is str or v is None or t is bool:
                continue
            if t is int:
                if lo <= v <= hi:
                    continue
                return False
            if t is float and -9.0e18 < v < 9.0e18:
                continue
            return False
        return True

    def scalar(self, v: Any) -> None:
        t = type(v)
        if t is int:
            if not self.lo <= v <= self.hi:
                raise ParseError(ErrorCode.INTEGER_OUT_OF_RANGE,
                                 f"integer {_brief(v)} is beyond {self.spelled} (parse.integer-range)")
        elif t is float:
            if not math.isfinite(v):
                raise ParseError(ErrorCode.NON_FINITE_NUMBER,
                                 f"number {v!r} is beyond what a double holds (not finite)")
            if not self.exact and v.is_integer() and abs(v) >= 2**63:
                raise _Suspect()
        elif t is str and not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as exc:
                cp = ord(v[exc.start])
                raise ParseError(ErrorCode.LONE_SURROGATE,
                                 f"string holds a lone surrogate U+{cp:04X}: not Unicode text") from None


def _non_finite(name: str) -> Any:
    raise ParseError(ErrorCode.NON_FINITE_NUMBER, f"{name} is not a JSON number (RFC 8259 §6)")


def _decode_slow(payload: bytes, strict_error: orjson.JSONDecodeError | None, walk: _Walk) -> Any:
    """The precise code of a record orjson refused or doubted; the document if it is fine."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(ErrorCode.INVALID_UTF8, f"payload is not UTF-8: {exc}") from exc
    try:
        doc = json.loads(text, parse_constant=_non_finite)
    except json.JSONDecodeError as exc:
        raise ParseError(ErrorCode.MALFORMED_JSON, f"payload is not JSON: {exc}") from exc
    except ParseError:  # NaN / Infinity (_non_finite)
        raise
    except ValueError as exc:  # an integer literal beyond sys.get_int_max_str_digits()
        found = re.search(r"value has (\d+) digits", str(exc))
        size = f"{found.group(1)} digits" if found else f"more than {sys.get_int_max_str_digits()} digits"
        raise ParseError(ErrorCode.INTEGER_OUT_OF_RANGE,
                         f"an integer of {size} is beyond {walk.spelled} (parse.integer-range)") from None
    except RecursionError:
        raise ParseError(ErrorCode.TOO_DEEP, f"JSON nesting is deeper than {walk.max_depth} "
                         f"levels: limit is {walk.max_depth}") from None
    walk.check(doc)
    if strict_error is not None:  # Python's json took it and no check names it (e.g. a BOM)
        raise ParseError(ErrorCode.MALFORMED_JSON, f"payload is not JSON: {strict_error}")
    return doc


def decode_strict(payload: bytes, limits: StrictLimits = _DEFAULT_LIMITS, walk: _Walk | None = None) -> Any:
    """Payload -> a JSON value, or ParseError with the code of checks 2-4 (module docstring).

    `walk`: a `_Walk(limits, exact=False)` to reuse (the batch parser keeps one)."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        refused: orjson.JSONDecodeError | None = exc
    else:
        try:
            (walk or _Walk(limits, exact=False)).check(doc)
            return doc
        except _Suspect:
            refused = None
    # Out of the except blocks: the dead letter's stack trace chains only the precise error.
    return _decode_slow(payload, refused, _Walk(limits, exact=True))


def _decode(raw: RawRecord, max_record_bytes: int, limits: StrictLimits,
            walk: _Walk | None = None) -> dict[str, Any]:
    if len(raw.payload) > max_record_bytes:
        raise ParseError(
            ErrorCode.OVERSIZED,
            f"record is {len(raw.payload)} bytes, limit is {max_record_bytes}",
        )
    doc = decode_strict(raw.payload, limits, walk)
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
        except EventTimeRangeError as exc:
            raise ParseError(ErrorCode.EVENT_TIME_OUT_OF_RANGE, f"time field {time_field!r}: {exc}") from exc
        except ValueError as exc:
            raise ParseError(ErrorCode.SCHEMA, f"time field {time_field!r}: {exc}") from exc
    if raw.timestamp_ms is not None:
        try:
            return _in_range(raw.timestamp_ms)
        except EventTimeRangeError as exc:
            raise ParseError(ErrorCode.EVENT_TIME_OUT_OF_RANGE, f"record timestamp: {exc}") from exc
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
    limits: StrictLimits = _DEFAULT_LIMITS,
) -> Event:
    """One RawRecord -> Event; raises `ParseError` (with `error_code`) on bad input.

    The Event keeps the record's event id, source and headers; its value is
    the decoded JSON object.
    """
    doc = _decode(raw, max_record_bytes, limits)
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


class BatchParser:
    """A batch of source items -> Events and DeadLetters, in order (a `flat_map_batch` mapper).

    A RawRecord is parsed (`parse_record` with the bound options; a bad one
    becomes a dead letter with stage `stage`, counted in `dlq_event_count`);
    an Event or a DeadLetter (a source's own) passes unchanged; anything else
    is an UNSUPPORTED_TYPE dead letter with stage `source_stage`.

        >>> from dataflows.events import RawRecord
        >>> parse = BatchParser(pipeline="p", stage="p.parse", source_stage="p.source",
        ...                     key_field="id", time_field=None, max_record_bytes=1000)
        >>> [type(x).__name__ for x in parse([RawRecord(b'{"id": 1}', "e1", "t", timestamp_ms=5),
        ...                                   RawRecord(b"{", "e2", "t")])]
        ['Event', 'DeadLetter']
    """

    __slots__ = ("pipeline", "stage", "source_stage", "key_field", "time_field", "max_bytes",
                 "op_field", "required", "optional", "limits", "walk", "fast_fields")

    def __init__(self, *, pipeline: str, stage: str, source_stage: str, key_field: str,
                 time_field: str | None, max_record_bytes: int, op_field: str | None = None,
                 required: Mapping[str, TypeSpec] | None = None,
                 optional: Mapping[str, TypeSpec] | None = None,
                 limits: StrictLimits = _DEFAULT_LIMITS) -> None:
        self.pipeline, self.stage, self.source_stage = pipeline, stage, source_stage
        self.key_field, self.time_field, self.op_field = key_field, time_field, op_field
        self.max_bytes = max_record_bytes
        self.required, self.optional, self.limits = required, optional, limits
        self.walk = _Walk(limits, exact=False)
        # (field, the exact types that pass, required): a value of another type (or a
        # missing required one) is judged again by `_check_fields`, which names the error
        self.fast_fields = [(name, _exact_types(spec), True) for name, spec in (required or {}).items()]
        self.fast_fields += [(name, _exact_types(spec), False) for name, spec in (optional or {}).items()]

    def parse(self, raw: RawRecord) -> Event:
        """One record (raises ParseError)."""
        doc = _decode(raw, self.max_bytes, self.limits, self.walk)
        key = _key(doc, self.key_field)
        for name, types, required in self.fast_fields:
            v = doc.get(name)
            if type(v) not in types and (required or v is not None):
                _check_fields(doc, self.required, self.optional)
                break
        return _event(key, doc, _event_time(doc, self.time_field, raw), raw.event_id, raw.source,
                      _op(doc, self.op_field), raw.headers)

    def __call__(self, batch: list[Any]) -> list[Event | DeadLetter]:
        out: list[Event | DeadLetter] = []
        append = out.append
        parse = self.parse
        for item in batch:
            if isinstance(item, RawRecord):
                try:
                    append(parse(item))
                except Exception as exc:  # noqa: BLE001 - every failure is a dead letter
                    append(self._letter(item, exc))
            elif isinstance(item, (Event, DeadLetter)):
                append(item)
            else:
                append(self._unsupported(item))
        return out

    def _letter(self, item: Any, exc: BaseException) -> DeadLetter:
        from dataflows.errors import _to_dead_letter

        return _to_dead_letter(item, exc, self.stage, self.pipeline)

    def _unsupported(self, item: Any) -> DeadLetter:
        from dataflows.dead_letter import counted_dead_letter

        return counted_dead_letter(item, code=ErrorCode.UNSUPPORTED_TYPE, stage=self.source_stage,
                                   pipeline=self.pipeline,
                                   message=f"a source yielded a {type(item).__name__}, not a RawRecord or Event")


def __getattr__(name: str) -> Any:
    """`parse_events`, the Bytewax operator, lives in `dataflows.flow` (imported on use)."""
    if name == "parse_events":
        from dataflows.flow import parse_events

        return parse_events
    raise AttributeError(name)
