"""DLQ inspection and replay (the logic behind `streamforge dlq`).

A DLQ is a Kafka topic (value = `DeadLetter.to_json()`, see
dataflows/connectors/kafka_dlq.py) or a JSONL file of the same envelopes.

- `summarize(letters, flt)`: counts by error code and stage, samples.
- `replay(letters, ...)`: re-produce each matching dead letter's ORIGINAL key
  and payload bytes (and its original headers) to `--to` or the topic of its
  coordinates (same partition when it goes back to that topic), with header
  `sf-event-id` = its event id and `sf-replay` = the replay tag; rate-limited;
  `dry_run` only counts. The Kafka source gives a record carrying `sf-replay`
  the event id of its `sf-event-id` header, so a Deduplicator keyed on event
  ids makes a second replay of the same letters harmless.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from dataflows.connectors.kafka_common import EVENT_ID_HEADER, REPLAY_HEADER
from dataflows.dead_letter import DeadLetter

__all__ = [
    "DlqFilter",
    "RateLimiter",
    "ReplayReport",
    "parse_time_ms",
    "read_dlq_file",
    "read_dlq_topic",
    "replay",
    "replay_record",
    "summarize",
]


def parse_time_ms(text: str) -> int:
    """ISO-8601 (naive = UTC) or epoch milliseconds -> epoch milliseconds."""
    if text.strip().isdigit():
        return int(text)
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


@dataclass(frozen=True)
class DlqFilter:
    """Which dead letters to take: codes, stages, failure time range (last failure)."""

    error_codes: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.error_codes and letter.error_code not in self.error_codes:
            return False
        if self.stages and letter.stage not in self.stages:
            return False
        t = letter.last_failure_ms or letter.first_failure_ms
        if self.since_ms is not None and t < self.since_ms:
            return False
        return not (self.until_ms is not None and t >= self.until_ms)


def read_dlq_file(path: str) -> Iterator[DeadLetter]:
    from dataflows.connectors.dlq import read_dead_letters

    yield from read_dead_letters(path)


def read_dlq_topic(brokers: str, topic: str, *, timeout_s: float = 30.0) -> Iterator[DeadLetter]:
    """Every dead letter of a DLQ topic (all partitions, start to end, read_committed)."""
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "streamforge-dlq-tool",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })
    try:
        md = consumer.list_topics(timeout=timeout_s)
        if topic not in md.topics:
            raise LookupError(f"DLQ topic {topic!r} does not exist on {brokers}")
        parts = list(md.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(parts):
            msgs = consumer.consume(500, 0.2)
            if not msgs and time.monotonic() > deadline:
                raise TimeoutError(f"reading DLQ topic {topic!r}: no end after {timeout_s:g}s")
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done.add(m.partition() or 0)
                        continue
                    raise RuntimeError(f"reading DLQ topic {topic!r}: {err}")
                deadline = time.monotonic() + timeout_s
                value = m.value()
                if value is None:  # a tombstone: nothing to inspect or replay
                    continue
                try:
                    yield DeadLetter.from_json(value)
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{topic}[{m.partition()}]@{m.offset()} is not a dead letter: {exc}") from None
    finally:
        consumer.close()


def _sample(letter: DeadLetter, max_payload: int = 200) -> dict[str, Any]:
    payload = letter.payload[:max_payload].decode("utf-8", "backslashreplace")
    return {
        "event_id": letter.event_id,
        "error_code": letter.error_code,
        "stage": letter.stage,
        "message": letter.error_message,
        "coords": dict(letter.coords),
        "key": None if letter.key is None else letter.key.decode("utf-8", "backslashreplace"),
        "payload": payload + ("..." if len(letter.payload) > max_payload else ""),
        "attempts": letter.attempts,
        "last_failure_ms": letter.last_failure_ms,
    }


def summarize(letters: Iterable[DeadLetter], flt: DlqFilter, *, samples: int = 3) -> dict[str, Any]:
    """Counts by error code, stage and pipeline, and up to `samples` letters per code."""
    by_code: Counter[str] = Counter()
    by_stage: Counter[str] = Counter()
    by_pipeline: Counter[str] = Counter()
    picked: dict[str, list[dict[str, Any]]] = {}
    total = matched = 0
    for letter in letters:
        total += 1
        if not flt.matches(letter):
            continue
        matched += 1
        by_code[letter.error_code] += 1
        by_stage[letter.stage] += 1
        by_pipeline[letter.pipeline] += 1
        bucket = picked.setdefault(letter.error_code, [])
        if len(bucket) < samples:
            bucket.append(_sample(letter))
    return {
        "total": total,
        "matched": matched,
        "by_error_code": dict(by_code.most_common()),
        "by_stage": dict(by_stage.most_common()),
        "by_pipeline": dict(by_pipeline.most_common()),
        "samples": picked,
    }


class RateLimiter:
    """At most `rate` calls of `wait()` per second (None: unlimited)."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self._clock, self._sleep = rate, clock, sleep
        self._next = clock()

    def wait(self) -> None:
        if not self.rate:
            return
        now = self._clock()
        if self._next > now:
            self._sleep(self._next - now)
        self._next = max(self._next, now) + 1.0 / self.rate


def replay_record(letter: DeadLetter, to: str | None, tag: str) -> dict[str, Any] | None:
    """The produce() arguments replaying `letter`; None if it names no topic."""
    original = letter.coords.get("topic")
    topic = to or original
    if not topic:
        return None
    headers = [(k, v) for k, v in letter.headers if k not in (EVENT_ID_HEADER, REPLAY_HEADER)]
    headers += [(EVENT_ID_HEADER, letter.event_id.encode()), (REPLAY_HEADER, tag.encode())]
    record: dict[str, Any] = {"topic": topic, "key": letter.key, "value": letter.payload, "headers": headers}
    partition = letter.coords.get("partition")
    if topic == original and isinstance(partition, int):
        record["partition"] = partition
    return record


@dataclass
class ReplayReport:
    total: int = 0
    matched: int = 0
    replayed: int = 0
    no_topic: int = 0
    failed: int = 0
    dry_run: bool = False
    tag: str = ""
    by_topic: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("by_topic", "errors")}
        return {**d, "by_topic": dict(self.by_topic), "errors": self.errors[:10]}


def replay(
    letters: Iterable[DeadLetter],
    *,
    brokers: str | None,
    flt: DlqFilter,
    to: str | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    tag: str | None = None,
    progress: Callable[[int], None] = lambda n: None,
    producer: Any = None,
) -> ReplayReport:
    """Replay the matching dead letters (see module docstring)."""
    report = ReplayReport(dry_run=dry_run, tag=tag or str(int(time.time() * 1000)))
    if not dry_run and producer is None:
        if not brokers:
            raise ValueError("brokers are needed to replay (or use a dry run)")
        producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    limiter = RateLimiter(None if dry_run else rate)

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            report.failed += 1
            report.errors.append(f"{msg.topic()}: {err.str()}")
        else:
            report.replayed += 1
            report.by_topic[msg.topic()] += 1

    for letter in letters:
        report.total += 1
        if not flt.matches(letter):
            continue
        report.matched += 1
        record = replay_record(letter, to, report.tag)
        if record is None:
            report.no_topic += 1
            continue
        progress(1)
        if dry_run:
            report.by_topic[record["topic"]] += 1
            continue
        limiter.wait()
        while True:
            try:
                producer.produce(on_delivery=on_delivery, **record)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer is not None and not dry_run:
        producer.flush(60)
    return report


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


def letters_source(brokers: str | None, topic: str | None, file: str | None) -> Iterable[DeadLetter]:
    if file:
        return read_dlq_file(file)
    assert brokers and topic
    return read_dlq_topic(brokers, topic)


def as_set(values: Sequence[str] | None) -> frozenset[str]:
    return frozenset(v for item in values or () for v in item.split(",") if v)
