"""Kafka source: Bytewax's `KafkaSource`, emitting `RawRecord`s and dead letters.

`RawRecordKafkaSource` wraps `bytewax.connectors.kafka.KafkaSource` (one
partition per Kafka partition, read with `assign()`, the next offset kept in
the recovery state, so a resume re-reads from the last snapshot) and converts
what it reads:

- a message -> `RawRecord(payload=value bytes, event_id=kafka:{t}:{p}:{o}
  (a DLQ replay, header `sf-replay`, keeps the id of its `sf-event-id` header),
  source=kafka:{topic}, key, timestamp_ms, headers, coords={topic, partition,
  offset})`, and `now - message timestamp` into `source_latency_ms`;
- a consumer error (Bytewax's `KafkaError`, its operators' `.errs` stream) ->
  a `DeadLetter` with code `SOURCE_ERROR` (never dropped).

Parsing is not done here (the parse step gets the bytes). The stream is mixed
(RawRecord | DeadLetter): split it with `dataflows.errors.split_dead_letters`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING

from dataflows import metrics
from dataflows.connectors.kafka.common import EVENT_ID_HEADER, REPLAY_HEADER, header_value
from dataflows.dead_letter import DeadLetter, ErrorCode, counted_dead_letter
from dataflows.events import RawRecord, kafka_event_id, now_ms

__all__ = ["RawRecordKafkaSource", "to_dead_letter", "to_raw_record"]

Item = RawRecord | DeadLetter
_Msg = KafkaSourceMessage[Any, Any]


def to_raw_record(msg: _Msg) -> RawRecord:
    """A Kafka message as a RawRecord (bytes untouched; a null value -> b"")."""
    topic, part, offset = msg.topic or "", int(msg.partition or 0), int(msg.offset or 0)
    ts = msg.timestamp[1] if msg.timestamp and msg.timestamp[0] != 0 else None
    headers = tuple((k, v if v is not None else b"") for k, v in msg.headers or ())
    event_id = kafka_event_id(topic, part, offset)
    if header_value(headers, REPLAY_HEADER) is not None:  # a DLQ replay keeps its event id
        event_id = (header_value(headers, EVENT_ID_HEADER) or b"").decode() or event_id
    return RawRecord(
        payload=msg.value if msg.value is not None else b"",
        event_id=event_id,
        source=f"kafka:{topic}",
        key=msg.key,
        timestamp_ms=ts,
        headers=headers,
        coords={"topic": topic, "partition": part, "offset": offset},
    )


def to_dead_letter(err: KafkaError[Any, Any], *, stage: str, pipeline: str) -> DeadLetter:
    """A consumer error as a SOURCE_ERROR dead letter with the message's context."""
    return counted_dead_letter(
        to_raw_record(err.msg),
        code=ErrorCode.SOURCE_ERROR,
        stage=stage,
        pipeline=pipeline,
        message=f"Kafka consumer error: {err.err.str()} (code {err.err.code()})",
    )


class _RawRecordPartition(StatefulSourcePartition[Item, Any]):
    """Delegates to Bytewax's partition; converts each item it reads."""

    def __init__(self, inner: StatefulSourcePartition[Any, Any], stage: str, pipeline: str) -> None:
        self._inner = inner
        self._stage = stage
        self._pipeline = pipeline
        self._latency_by_source: dict[str, Any] = {}

    def next_batch(self) -> list[Item]:
        out: list[Item] = []
        now = now_ms()
        for msg in self._inner.next_batch():
            if isinstance(msg, KafkaError):
                out.append(to_dead_letter(msg, stage=self._stage, pipeline=self._pipeline))
                continue
            rec = to_raw_record(msg)
            if rec.timestamp_ms is not None:
                self._latency(rec.source).observe(max(0, now - rec.timestamp_ms))
            out.append(rec)
        return out

    def _latency(self, source: str) -> Any:
        child = self._latency_by_source.get(source)
        if child is None:
            child = metrics.SOURCE_LATENCY.labels(pipeline=self._pipeline, source=source)
            self._latency_by_source[source] = child
        return child

    def next_awake(self) -> Any:
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class RawRecordKafkaSource(FixedPartitionedSource[Item, Any]):
    """Kafka topics as a stream of `RawRecord` (and `DeadLetter` for consumer errors)."""

    def __init__(
        self,
        brokers: Sequence[str],
        topics: Sequence[str],
        *,
        pipeline: str,
        tail: bool = True,
        starting_offset: int = OFFSET_BEGINNING,
        batch_size: int = 1000,
        add_config: dict[str, Any] | None = None,
    ) -> None:
        self.brokers = list(brokers)
        self.topics = list(topics)
        self.pipeline = pipeline
        self._inner = KafkaSource(
            self.brokers,
            self.topics,
            tail=tail,
            starting_offset=starting_offset,
            add_config=add_config,
            batch_size=batch_size,
            raise_on_errors=False,
        )

    def list_parts(self) -> list[str]:
        return self._inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _RawRecordPartition:
        inner = self._inner.build_part(step_id, for_part, resume_state)
        return _RawRecordPartition(inner, step_id, self.pipeline)
