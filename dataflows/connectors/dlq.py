"""The dead-letter queue of a pipeline: the file DLQ, a sink's own dead letters, late events.

There is one DLQ per pipeline, the config's `dlq` section (`type: file` with
`path`, or `type: kafka` with `brokers` and `topic`). Dead letters reach it two ways:

- as a stream: `JsonlDeadLetterSink(path)` (file) or `kafka.KafkaDlqSink` (Kafka) is
  the pipeline's DLQ step. The file sink writes `DeadLetter.to_json()` per line with
  the same exactly-once rule as `JsonlSink` (fsync per batch, snapshot = offset,
  truncate to it on resume). Feed it `(key, DeadLetter)` pairs (or use
  `dataflows.pipelines.io.write_output`, which keys items for you).
- from inside a sink: a Kafka or MongoDB sink cannot emit downstream, so its own
  failures (SINK_WRITE, UNSUPPORTED_TYPE) go through `sink_dead_letters(section,
  pipeline)`, a writer of the same `dlq`: a Kafka DLQ topic (`KafkaDeadLetterWriter`,
  confirmed before the sink's snapshot returns) or the same file
  (`JsonlDeadLetterAppender`: appended under an exclusive `flock`, fsync'ed, marked
  `"written_by": "sink"`). When the file sink resumes it truncates only its own
  replayed lines and keeps the marked ones after its offset: a sink's dead letter is
  written at least once (a replayed epoch writes it again, with the same event id),
  never lost.

`read_dead_letters(path)` reads a file DLQ back, bytes and all.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from dataflows.config import Config, ConfigError
from dataflows.connectors.files import JsonlSink, JsonlSinkPartition
from dataflows.dead_letter import DeadLetter, ErrorCode, counted_dead_letter

__all__ = [
    "SINK_WRITER",
    "DeadLetters",
    "default_dlq_path",
    "JsonlDeadLetterAppender",
    "JsonlDeadLetterSink",
    "late_to_dead_letter",
    "read_dead_letters",
    "sink_dead_letters",
]

DeadLetters = Callable[[Sequence[DeadLetter]], None]
"""Where a sink hands the dead letters it makes (`sink_dead_letters` builds one)."""

SINK_WRITER = "sink"
_REMOVED_SINK_KEYS = ("dlq-path", "dlq-topic", "dlq-brokers")

def _encode_dead_letter(letter: DeadLetter) -> str:
    if not isinstance(letter, DeadLetter):
        raise TypeError(f"a DLQ sink takes DeadLetters, got {type(letter).__name__}")
    return letter.to_json()


def _is_sink_line(line: bytes) -> bool:
    try:
        return bool(json.loads(line).get("written_by") == SINK_WRITER)
    except (ValueError, AttributeError):
        return False


class _DeadLetterFilePartition(JsonlSinkPartition):
    """The file DLQ's partition: writes under the file's lock; on resume keeps the lines
    a sink appended after the snapshot offset (`JsonlDeadLetterAppender`)."""

    def resume_at(self, offset: int) -> None:
        """Truncate to `offset`, keeping the sink's lines after it. They are saved first in
        `<path>.sink-kept` (fsync'ed, removed last), so a process killed between the
        truncate and their rewrite finds them there at its next resume."""
        side = Path(self._f.name + ".sink-kept")
        fcntl.flock(self._f.fileno(), fcntl.LOCK_EX)
        try:
            self._f.seek(offset)
            tail = self._f.read().split(b"\n") + (side.read_bytes().split(b"\n") if side.exists() else [])
            kept = list(dict.fromkeys(line for line in tail if line.strip() and _is_sink_line(line)))
            if kept:
                _write_synced(side, b"".join(line + b"\n" for line in kept))
            super().resume_at(offset)
            if kept:
                self._f.write(b"".join(line + b"\n" for line in kept))
                self._f.flush()
                os.fsync(self._f.fileno())
            side.unlink(missing_ok=True)
        finally:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)

    def write_batch(self, values: list[Any]) -> None:
        fcntl.flock(self._f.fileno(), fcntl.LOCK_EX)
        try:
            super().write_batch(values)
        finally:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class JsonlDeadLetterSink(JsonlSink):
    """A JSONL file of dead letters, exactly-once on resume (see `JsonlSink`); a sink's
    own dead letters appended to the same file are kept (see the module docstring)."""

    partition_class = _DeadLetterFilePartition

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, encode=_encode_dead_letter)


class JsonlDeadLetterAppender:
    """A sink's writer into a file DLQ: appends letters (locked, fsync'ed, marked as a
    sink's, so the DLQ file sink keeps them when it resumes)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __call__(self, letters: Sequence[DeadLetter]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(dl.to_json(written_by=SINK_WRITER) + "\n" for dl in letters).encode("utf-8")
        with self.path.open("ab") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def read(self) -> list[DeadLetter]:
        return list(read_dead_letters(self.path))


def default_dlq_path(pipeline: str) -> str:
    """`.streamforge/<pipeline>/out/dlq.jsonl`, the file DLQ of the shipped configs."""
    return f".streamforge/{pipeline}/out/dlq.jsonl"


def sink_dead_letters(sink: Config, pipeline: str) -> DeadLetters:
    """The writer a sink built from section `sink` hands its own dead letters to: the
    pipeline's `dlq` (file -> `JsonlDeadLetterAppender`, kafka -> `KafkaDeadLetterWriter`).

    Refuses the removed per-sink keys (`dlq-path`, `dlq-topic`, `dlq-brokers`) naming
    the `dlq` section; a `dlq` section without `path` / `topic` is a ConfigError at
    build. A config without any `dlq` section (a sink built on its own) uses
    `default_dlq_path(pipeline)`.
    """
    for key in _REMOVED_SINK_KEYS:
        if sink.has(key):
            raise ConfigError(
                f"{sink.full_key(key)}: removed: a sink's own dead letters go to the pipeline's DLQ, "
                f"the `dlq` section (dlq.path for type file, dlq.topic and dlq.brokers for type kafka) "
                f"(in {sink.origin})"
            )
    dlq = sink.top_section("dlq")
    if not dlq.data:  # a sink built alone, outside a pipeline config: the shipped configs' DLQ path
        dlq = Config({"path": default_dlq_path(pipeline)}, sink.origin, "dlq.")
    if dlq.choice("type", ("file", "kafka"), "file") == "file":
        return JsonlDeadLetterAppender(dlq.str("path"))
    from dataflows.connectors.kafka import brokers_from_config  # only for Kafka DLQs
    from dataflows.connectors.kafka.common import check_cluster
    from dataflows.connectors.kafka.dlq import KafkaDeadLetterWriter
    from dataflows.retry import retry_policy_from_config

    brokers, topic = brokers_from_config(dlq), dlq.str("topic")
    if dlq.bool("check", True):
        check_cluster(brokers, [topic], dlq.duration("metadata-timeout", 5.0))
    return KafkaDeadLetterWriter(brokers, topic, retry=retry_policy_from_config(dlq))


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
    letter = counted_dead_letter(
        event,
        code=ErrorCode.LATE_EVENT,
        stage=stage,
        pipeline=pipeline,
        message=(
            f"event time {event.event_time_ms} is {lateness} ms behind the watermark "
            f"{late.watermark_ms}: {late.reason}"
        ),
    )
    coords = {
        "event_time_ms": event.event_time_ms,
        "watermark_ms": late.watermark_ms,
        "reason": str(late.reason),
    }
    return replace(letter, coords=coords)
