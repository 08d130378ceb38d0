"""The JSONL dead-letter queue: a file sink, a reader, and late events as dead letters.

`JsonlDeadLetterSink(path)` writes `DeadLetter.to_json()` per line with the
same exactly-once rule as `JsonlSink` (fsync per batch, snapshot = offset,
truncate to it on resume). Feed it `(key, DeadLetter)` pairs (or use
`dataflows.pipelines.io.write_output`, which keys items for you).
`read_dead_letters(path)` reads them back, bytes and all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from dataflows import metrics
from dataflows.connectors.files import JsonlSink
from dataflows.dead_letter import DeadLetter, ErrorCode, dead_letter

__all__ = ["JsonlDeadLetterSink", "late_to_dead_letter", "read_dead_letters"]


def _encode_dead_letter(letter: DeadLetter) -> str:
    if not isinstance(letter, DeadLetter):
        raise TypeError(f"a DLQ sink takes DeadLetters, got {type(letter).__name__}")
    return letter.to_json()


class JsonlDeadLetterSink(JsonlSink):
    """A JSONL file of dead letters, exactly-once on resume (see `JsonlSink`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, encode=_encode_dead_letter)


def read_dead_letters(path: str | os.PathLike[str]) -> Iterator[DeadLetter]:
    """The dead letters of a JSONL DLQ file, in order (nothing if it does not exist)."""
    p = Path(path)
    if not p.exists():
        return
    with p.open("rb") as f:
        for line in f:
            if line.strip():
                yield DeadLetter.from_json(line)


def late_to_dead_letter(late: Any, pipeline: str, stage: str) -> DeadLetter:
    """A `LateEvent` (event, reason, watermark_ms) as a `LATE_EVENT` dead letter.

    Keeps the event's value as the payload, its key and id; the coordinates
    say how late it was. Counts in `dlq_event_count`.
    """
    event = late.event
    lateness = late.watermark_ms - event.event_time_ms
    letter = dead_letter(
        event,
        code=ErrorCode.LATE_EVENT,
        stage=stage,
        pipeline=pipeline,
        message=(
            f"event time {event.event_time_ms} is {lateness} ms behind the watermark "
            f"{late.watermark_ms}: {late.reason}"
        ),
    )
    metrics.DLQ_EVENTS.labels(pipeline=pipeline, stage=stage, error_code=ErrorCode.LATE_EVENT).inc()
    coords = {
        "event_time_ms": event.event_time_ms,
        "watermark_ms": late.watermark_ms,
        "reason": str(late.reason),
    }
    return replace(letter, coords=coords)
