"""Kafka source: Kafka partitions read with `assign()`, emitting `RawRecord`s and dead letters.

`RawRecordKafkaSource` lists its partitions with `bytewax.connectors.kafka.KafkaSource`
(one partition per Kafka partition, named `{index}-{topic}`) and reads each with its own
consumer, the way Bytewax's partition does (0.21.1 `_KafkaSourcePartition`: `assign()` at
the resume offset, `consume(batch_size, 0.001)`, the next offset to read kept as the
recovery state, so a resume re-reads from the last snapshot and states written by either
load in the other), converting each message straight from confluent-kafka's `Message`
(no intermediate `KafkaSourceMessage`):

- a message -> `RawRecord(payload=value bytes, event_id=kafka:{t}:{p}:{o}
  (a DLQ replay, header `sf-replay`, keeps the id of its `sf-event-id` header),
  source=kafka:{topic}, key, timestamp_ms, headers, coords={topic, partition,
  offset})`;
- a consumer error -> a `DeadLetter` with code `SOURCE_ERROR` (never dropped);
- `source_latency_ms`: once per batch, now minus the timestamp of the batch's oldest
  record (the batch's worst latency; per record it cost a histogram update per event).

Parsing is not done here (the parse step gets the bytes). The stream is mixed
(RawRecord | DeadLetter): split it with `dataflows.errors.split_dead_letters`.

    source = RawRecordKafkaSource(["127.0.0.1:9092"], ["orders"], pipeline="orders", tail=False)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bytewax.connectors.kafka import KafkaSource
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from dataflows import metrics
from dataflows.connectors.kafka.common import EVENT_ID_HEADER, REPLAY_HEADER, header_value
from dataflows.dead_letter import DeadLetter, ErrorCode, counted_dead_letter
from dataflows.events import RawRecord, kafka_event_id, now_ms
from dataflows.flow.pacing import EpochPacer
from dataflows.flow.threads import pin_thread_state
from dataflows.records import frozen_factory

__all__ = ["RawRecordKafkaSource", "to_dead_letter", "to_raw_record"]

Item = RawRecord | DeadLetter
_NO_TIMESTAMP = 0  # confluent_kafka.TIMESTAMP_NOT_AVAILABLE
_raw_record = frozen_factory(RawRecord)  # RawRecord(...) without the frozen __init__'s per-field setattr


def to_raw_record(msg: Message) -> RawRecord:
    """A Kafka message as a RawRecord (bytes untouched; a null value -> b"")."""
    topic, part, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
    kind, ts = msg.timestamp()
    raw_headers: Any = msg.headers()  # list of (str, bytes | None), or None
    event_id = kafka_event_id(topic, part, offset)
    headers: tuple[tuple[str, bytes], ...] = ()
    if raw_headers:
        headers = tuple((k, v if v is not None else b"") for k, v in raw_headers)
        if header_value(headers, REPLAY_HEADER) is not None:  # a DLQ replay keeps its event id
            event_id = (header_value(headers, EVENT_ID_HEADER) or b"").decode() or event_id
    value = msg.value()
    return _raw_record(
        value if value is not None else b"",
        event_id,
        "kafka:" + topic,
        msg.key(),
        ts if kind != _NO_TIMESTAMP else None,
        headers,
        {"topic": topic, "partition": part, "offset": offset},
    )


def to_dead_letter(msg: Message, err: KafkaError, *, stage: str, pipeline: str) -> DeadLetter:
    """A consumer error as a SOURCE_ERROR dead letter with the message's context."""
    return counted_dead_letter(
        to_raw_record(msg),
        code=ErrorCode.SOURCE_ERROR,
        stage=stage,
        pipeline=pipeline,
        message=f"Kafka consumer error: {err.str()} (code {err.code()})",
    )


class _RawRecordPartition(StatefulSourcePartition[Item, int]):
    """One Kafka partition; emits its records (and consumer errors as dead letters); keeps the
    next offset to read."""

    def __init__(self, config: dict[str, Any], topic: str, index: int, offset: int, batch_size: int,
                 stage: str, pipeline: str) -> None:
        self._offset = offset
        self._consumer = Consumer(config)
        self._consumer.assign([TopicPartition(topic, index, offset)])
        self._batch_size = batch_size
        self._eof = False
        self._stage = stage
        self._pipeline = pipeline
        self._latency = metrics.SOURCE_LATENCY.labels(pipeline=pipeline, source=f"kafka:{topic}")
        self._pacer = EpochPacer()  # no spinning through the epoch-boundary wait

    def next_batch(self) -> list[Item]:
        self._pacer.polled()
        if self._eof:
            raise StopIteration()
        out: list[Item] = []
        last = oldest = None
        for msg in self._consumer.consume(self._batch_size, 0.001):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = True  # emit this batch; end at the next call
                    break
                out.append(to_dead_letter(msg, err, stage=self._stage, pipeline=self._pipeline))
            else:
                rec = to_raw_record(msg)
                if rec.timestamp_ms is not None and (oldest is None or rec.timestamp_ms < oldest):
                    oldest = rec.timestamp_ms
                out.append(rec)
            offset = msg.offset()
            if offset is not None and offset >= 0:
                last = offset
        if last is not None:
            self._offset = last + 1  # resume after it
        if oldest is not None:
            self._latency.observe(max(0, now_ms() - oldest))
        return out

    def next_awake(self) -> datetime | None:
        return self._pacer.next_awake()

    def snapshot(self) -> int:
        self._pacer.advanced()
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class RawRecordKafkaSource(FixedPartitionedSource[Item, int]):
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
        self._tail = tail
        self._starting_offset = starting_offset
        self._batch_size = batch_size
        self._add_config = dict(add_config or {})
        self._lister = KafkaSource(self.brokers, self.topics, add_config=add_config)

    def list_parts(self) -> list[str]:
        pin_thread_state()
        return self._lister.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _RawRecordPartition:
        index, topic = for_part.split("-", 1)
        if topic not in self.topics:
            raise ValueError(f"source partition {for_part!r}: topic {topic!r} is not one of {self.topics}")
        config: dict[str, Any] = {
            "group.id": "BYTEWAX_IGNORED",  # positions live in the recovery state, not a group
            "enable.auto.commit": "false",
            "bootstrap.servers": ",".join(self.brokers),
            "enable.partition.eof": str(not self._tail),
            **self._add_config,
        }
        offset = self._starting_offset if resume_state is None else resume_state
        return _RawRecordPartition(config, topic, int(index), offset, self._batch_size, step_id, self.pipeline)
