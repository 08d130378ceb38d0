"""The dead-letter record: everything needed to understand and replay a failure.

A `DeadLetter` keeps the original bytes (key and payload) untouched, the error
(code, class, message, stack trace), where it failed (pipeline, stage = step
id), where the record came from (source and coordinates, event id) and how
often it failed (attempts, first and last failure time).

`to_json` / `from_json` give the JSON envelope used by every DLQ sink (JSONL
file, Kafka value); bytes are base64 so any payload survives, and the envelope
is strict JSON (`dataflows.json_codec`: text that is not valid Unicode gets
U+FFFD, a non-finite number is null), whatever the message or coordinates hold. `connect_headers`
gives the same context as Kafka-Connect-style headers.
"""

from __future__ import annotations

import base64
import json
import linecache
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ParamSpec

from dataflows import metrics
from dataflows.events import Event, RawRecord, now_ms
from dataflows.json_codec import dumps

_P = ParamSpec("_P")


class ErrorCode:
    """The error codes a dead letter can carry (one name per failure kind)."""

    INVALID_UTF8 = "INVALID_UTF8"
    MALFORMED_JSON = "MALFORMED_JSON"
    MISSING_KEY = "MISSING_KEY"
    SCHEMA = "SCHEMA"
    OVERSIZED = "OVERSIZED"
    NON_FINITE_NUMBER = "NON_FINITE_NUMBER"
    LONE_SURROGATE = "LONE_SURROGATE"
    INTEGER_OUT_OF_RANGE = "INTEGER_OUT_OF_RANGE"
    TOO_DEEP = "TOO_DEEP"
    EVENT_TIME_OUT_OF_RANGE = "EVENT_TIME_OUT_OF_RANGE"
    USER_FUNCTION = "USER_FUNCTION"
    LATE_EVENT = "LATE_EVENT"
    SOURCE_ERROR = "SOURCE_ERROR"
    SINK_WRITE = "SINK_WRITE"
    UNSUPPORTED_TYPE = "UNSUPPORTED_TYPE"


@dataclass(frozen=True)
class DeadLetter:
    """One failed record with its full context."""

    error_code: str
    error_message: str
    exception_class: str
    stage: str
    pipeline: str
    payload: bytes
    event_id: str
    source: str
    key: bytes | None = None
    stacktrace: str = ""
    coords: Mapping[str, Any] = field(default_factory=dict)
    headers: tuple[tuple[str, bytes], ...] = ()
    attempts: int = 1
    first_failure_ms: int = 0
    last_failure_ms: int = 0

    def to_json(self, *, written_by: str | None = None) -> str:
        """The JSON envelope; `written_by` marks a line a sink appended to a file DLQ
        (`dataflows.connectors.dlq`), ignored by `from_json`. The fields as they are (not
        `dataclasses.asdict`, which deep-copies each value: slow, and it raised for a
        coordinate that cannot be copied); `dumps` writes what JSON cannot hold as its str."""
        d = dict(self.__dict__)  # a plain (not slotted) dataclass: exactly its fields
        if written_by is not None:
            d["written_by"] = written_by
        d["payload"] = base64.b64encode(self.payload).decode()
        d["key"] = None if self.key is None else base64.b64encode(self.key).decode()
        d["coords"] = dict(self.coords)
        d["headers"] = [[k, base64.b64encode(v).decode()] for k, v in self.headers]
        return dumps(d).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> DeadLetter:
        d = json.loads(text)
        d.pop("written_by", None)
        d["payload"] = base64.b64decode(d["payload"])
        d["key"] = None if d.get("key") is None else base64.b64decode(d["key"])
        d["headers"] = tuple((k, base64.b64decode(v)) for k, v in d.get("headers", []))
        return cls(**d)

    def connect_headers(self) -> list[tuple[str, bytes]]:
        """Kafka Connect compatible error headers (`__connect.errors.*`)."""
        c = self.coords
        pairs = {
            "__connect.errors.topic": c.get("topic", ""),
            "__connect.errors.partition": c.get("partition", ""),
            "__connect.errors.offset": c.get("offset", ""),
            "__connect.errors.stage": self.stage,
            "__connect.errors.exception.class.name": self.exception_class,
            "__connect.errors.exception.message": self.error_message,
            "__connect.errors.exception.stacktrace": self.stacktrace,
            "sf-error-code": self.error_code,
            "sf-event-id": self.event_id,
            "sf-pipeline": self.pipeline,
            "sf-attempts": self.attempts,
        }
        return [(k, str(v).encode()) for k, v in pairs.items()]


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


_FRAME_TEXTS: dict[tuple[str, int, str], str] = {}
_FRAME_TEXTS_MAX = 4096  # distinct frame lines kept (a bad record class fails at the same few)


def _frame_text(frame: Any, lineno: int) -> str:
    """A frame's lines of a traceback (file, line, function; its source line), looked up once
    per place: a bad record class fails at the same frames thousands of times."""
    code = frame.f_code
    where = (code.co_filename, lineno, code.co_name)
    text = _FRAME_TEXTS.get(where)
    if text is None:
        text = f'  File "{code.co_filename}", line {lineno}, in {code.co_name}\n'
        source = linecache.getline(code.co_filename, lineno, frame.f_globals).strip()
        if source:
            text += f"    {source}\n"
        if len(_FRAME_TEXTS) >= _FRAME_TEXTS_MAX:
            _FRAME_TEXTS.clear()
        _FRAME_TEXTS[where] = text
    return text


def _format_one(exc: BaseException) -> list[str]:
    lines = ["Traceback (most recent call last):\n"] if exc.__traceback__ is not None else []
    tb = exc.__traceback__
    while tb is not None:  # traceback.walk_tb's walk, without its generator
        lines.append(_frame_text(tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    lines.extend(_exception_only(exc))
    return lines


def _exception_only(exc: BaseException) -> list[str]:
    """`traceback.format_exception_only`'s lines, without building a `TracebackException`
    (which walks and looks up every frame of the whole chain again)."""
    if isinstance(exc, SyntaxError):  # its caret display: rare, let traceback do it
        return traceback.format_exception_only(type(exc), exc)
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - as traceback does
        text = "<exception str() failed>"
    lines = [f"{name}: {text}\n" if text else f"{name}\n"]
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, (list, tuple)):
        lines.extend(f"{note}\n" for note in notes)
    return lines


def format_stack_trace(exc: BaseException) -> str:
    """`traceback.format_exception`'s text (frames as file, line, function and source line;
    the chain of causes and contexts), without 3.11's caret anchors: those run `ast.parse`
    on every frame's line, which made a dead letter cost tens of events."""
    chain: list[tuple[str, BaseException]] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    link = ""
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append((link, cur))
        if cur.__cause__ is not None:
            link, cur = _CAUSE, cur.__cause__
        elif cur.__context__ is not None and not cur.__suppress_context__:
            link, cur = _CONTEXT, cur.__context__
        else:
            cur = None
    out: list[str] = []
    for i in range(len(chain) - 1, -1, -1):  # oldest first, as Python prints it
        out.extend(_format_one(chain[i][1]))
        if i > 0:
            out.append(chain[i][0])
    return "".join(out)


def dead_letter(
    item: Any,
    *,
    code: str,
    stage: str,
    pipeline: str,
    exc: BaseException | None = None,
    message: str | None = None,
    attempts: int = 1,
    first_failure_ms: int | None = None,
) -> DeadLetter:
    """Build a dead letter for `item` (a RawRecord, an Event or anything else).

    The original bytes are kept: a RawRecord's payload as read, an Event's
    value as JSON, anything else as its repr.
    """
    ts = now_ms()
    if isinstance(item, RawRecord):
        payload, key, event_id, source = item.payload, item.key, item.event_id, item.source
        coords: Mapping[str, Any] = item.coords
        headers = item.headers
    elif isinstance(item, Event):
        payload, key, event_id, source = (
            item.payload_bytes(),
            item.key.encode(),
            item.event_id,
            item.source,
        )
        coords, headers = {}, item.headers
    else:
        payload, key, event_id, source, coords, headers = repr(item).encode(), None, "", "", {}, ()
    stack = ""
    if exc is not None:
        stack = format_stack_trace(exc)
    return DeadLetter(
        error_code=code,
        error_message=message if message is not None else (str(exc) if exc else code),
        exception_class=type(exc).__qualname__ if exc is not None else "",
        stage=stage,
        pipeline=pipeline,
        payload=payload,
        event_id=event_id,
        source=source,
        key=key,
        stacktrace=stack,
        coords=coords,
        headers=headers,
        attempts=attempts,
        first_failure_ms=first_failure_ms if first_failure_ms is not None else ts,
        last_failure_ms=ts,
    )


def _counted(build: Callable[_P, DeadLetter]) -> Callable[_P, DeadLetter]:
    def counted(*args: _P.args, **kwargs: _P.kwargs) -> DeadLetter:
        letter = build(*args, **kwargs)
        metrics.DLQ_EVENTS.labels(pipeline=letter.pipeline, step=letter.stage, error_code=letter.error_code).inc()
        return letter

    counted.__doc__ = (
        "`dead_letter(...)` and one count in `streamforge_dlq_event_count{pipeline, step=stage, "
        "error_code=code}`: the one call every step that makes a dead letter uses."
    )
    return counted


counted_dead_letter = _counted(dead_letter)
