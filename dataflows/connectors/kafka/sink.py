"""At-least-once Kafka sink with delivery callbacks, retries and dead letters.

Bytewax's `KafkaSink` flushes but never looks at delivery reports (an async
delivery failure is lost) and ignores `KafkaSinkMessage.partition`. This sink:

1. serialises each item (`common.to_out_message`: key = item.key,
   value = JSON, header `sf-event-id`); an item that cannot be serialised is a
   dead letter `UNSUPPORTED_TYPE`;
2. is a `FixedPartitionedSink` with one partition per output Kafka partition
   (items routed by key, so one key keeps one partition and its order; an
   item with an int `partition` attribute goes there); `write_batch` produces
   asynchronously with a delivery callback per record; `snapshot()`, which
   Bytewax calls at each epoch close before it makes the epoch's source
   offsets durable, waits for every delivery report: nothing is acknowledged
   before Kafka has it -> at-least-once (a crash replays the open epoch);
3. transient failures (broker away, timeouts, leader moves) are produced again
   after the `RetryPolicy`'s backoff (exponential, jitter, cap), counting
   `streamforge_sink_retries_total`; after the last attempt, or at once for a
   permanent error (record too large...), the record becomes a `DeadLetter`
   with code `SINK_WRITE` (value and key as they would have been written,
   coords = the output topic) handed to `dead_letters`, the pipeline's DLQ
   (`dataflows.connectors.dlq.sink_dead_letters`).

Feed it `(key, item)` pairs (`dataflows.pipelines.io.write_output` keys items for you).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, KafkaException, Producer

from dataflows import metrics
from dataflows.connectors.dlq import DeadLetters
from dataflows.connectors.kafka.common import (
    OutMessage,
    is_transient,
    partition_for,
    to_out_message,
)
from dataflows.dead_letter import DeadLetter, ErrorCode, counted_dead_letter
from dataflows.events import now_ms
from dataflows.flow.threads import pin_thread_state
from dataflows.retry import RetryPolicy

__all__ = ["DeadLetters", "InFlight", "KafkaSinkSettings", "ReliableKafkaSink", "encode_batch", "sink_dead_letter", "unwrap_item"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class KafkaSinkSettings:
    """Where and how a Kafka sink writes."""

    brokers: tuple[str, ...]
    topic: str
    pipeline: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    delivery_timeout_s: float = 30.0
    stage: str = "kafka-sink"
    add_config: dict[str, Any] = field(default_factory=dict)

    def producer_config(self, **extra: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": ",".join(self.brokers),
            "message.timeout.ms": int(self.delivery_timeout_s * 1000),
            "linger.ms": 5,
        }
        conf.update(extra)
        conf.update(self.add_config)
        return conf


def unwrap_item(item: Any) -> Any:
    """The item of a keyed `(str, item)` pair, else the item itself."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return item[1]
    return item


def sink_dead_letter(
    item: Any,
    msg: OutMessage | None,
    s: KafkaSinkSettings,
    *,
    code: str = ErrorCode.SINK_WRITE,
    error: BaseException | KafkaError | str,
    attempts: int = 1,
    first_failure_ms: int | None = None,
    partition: int | None = None,
) -> DeadLetter:
    """A dead letter for an item this sink could not write (counted in dlq_event_count)."""
    exc = error if isinstance(error, BaseException) else None
    text = error.str() if isinstance(error, KafkaError) else str(error)
    letter = counted_dead_letter(
        item,
        code=code,
        stage=s.stage,
        pipeline=s.pipeline,
        exc=exc,
        message=text,
        attempts=attempts,
        first_failure_ms=first_failure_ms,
    )
    coords: dict[str, Any] = {"topic": s.topic}
    if partition is not None:
        coords["partition"] = partition
    if msg is not None:
        letter = replace(
            letter,
            payload=msg.value,
            key=msg.key,
            event_id=msg.event_id or letter.event_id,
            headers=msg.headers,
            exception_class=letter.exception_class or "KafkaError",
        )
    letter = replace(letter, coords={**dict(letter.coords), **coords})
    return letter


def encode_batch(
    values: list[Any], s: KafkaSinkSettings
) -> tuple[list[tuple[Any, OutMessage]], list[DeadLetter]]:
    """Serialise a write batch: `(item, message)` pairs, and dead letters for unusable items."""
    encoded: list[tuple[Any, OutMessage]] = []
    dead: list[DeadLetter] = []
    for raw in values:
        item = unwrap_item(raw)
        try:
            encoded.append((item, to_out_message(item)))
        except Exception as exc:  # noqa: BLE001 - an unusable item is a dead letter
            dead.append(sink_dead_letter(item, None, s, code=ErrorCode.UNSUPPORTED_TYPE, error=exc))
    return encoded, dead


_Pending = tuple[Any, OutMessage]
_Failure = tuple[Any, OutMessage, Any]


class InFlight:
    """Records produced and not yet settled, with their delivery outcome."""

    def __init__(self, s: KafkaSinkSettings, partition: int | None) -> None:
        self._s = s
        self._partition = partition
        self.producer = Producer(s.producer_config())
        self.pending: list[_Pending] = []
        self.failed: list[_Failure] = []
        self.reported: set[int] = set()

    def produce(self, item: Any, msg: OutMessage) -> None:
        i = len(self.pending)
        self.pending.append((item, msg))

        def on_delivery(err: KafkaError | None, _m: Any) -> None:
            self.reported.add(i)
            if err is not None:
                self.failed.append((item, msg, err))

        kwargs: dict[str, Any] = {"headers": list(msg.headers), "on_delivery": on_delivery}
        part = getattr(item, "partition", None)
        if isinstance(part, int) and not isinstance(part, bool):
            kwargs["partition"] = part
        elif self._partition is not None:
            kwargs["partition"] = self._partition
        while True:
            try:
                self.producer.produce(self._s.topic, msg.value, msg.key, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.05)
            except KafkaException as exc:
                self.reported.add(i)
                self.failed.append((item, msg, exc))
                return

    def settle(self) -> list[_Failure]:
        """Wait for every delivery report; the failures (then forget all)."""
        try:
            # every message ends with a report within message.timeout.ms
            while self.producer.flush(self._s.delivery_timeout_s + 5) > 0:
                pass
        except KafkaException as exc:
            # fatal producer error (e.g. a broker that lost its state): start a new
            # producer; what has no delivery report yet is retried (at-least-once)
            log.warning("kafka sink %s: producer failed (%s); recreating it", self._s.topic, exc)
            self.producer = Producer(self._s.producer_config())
            transient = KafkaError(KafkaError._TRANSPORT, str(exc))
            self.failed.extend(
                (item, msg, transient) for i, (item, msg) in enumerate(self.pending) if i not in self.reported
            )
        failed = self.failed
        self.pending, self.failed, self.reported = [], [], set()
        return failed


class _ReliablePartition(StatefulSinkPartition[Any, None]):
    """Produces asynchronously; `snapshot()` (epoch close) settles every delivery."""

    def __init__(self, s: KafkaSinkSettings, dead_letters: DeadLetters, partition: int | None) -> None:
        self._s = s
        self._dead_letters = dead_letters
        self._inflight = InFlight(s, partition)

    def write_batch(self, values: list[Any]) -> None:
        encoded, dead = encode_batch(values, self._s)
        for item, msg in encoded:
            self._inflight.produce(item, msg)
        self._inflight.producer.poll(0)
        if dead:
            self._dead_letters(dead)

    def snapshot(self) -> None:
        self.flush()
        return None

    def flush(self) -> None:
        """Settle all deliveries: retry transient failures, dead-letter the rest."""
        first_ms = now_ms()
        delays = self._s.retry.delays()
        dead: list[DeadLetter] = []
        attempt = 1
        failures = self._inflight.settle()
        while failures:
            retry = [(item, msg) for item, msg, err in failures if is_transient(err)]
            dead.extend(
                sink_dead_letter(item, msg, self._s, error=err, attempts=attempt, first_failure_ms=first_ms)
                for item, msg, err in failures
                if not is_transient(err)
            )
            delay = next(delays, None) if retry else None
            if retry and delay is None:
                dead.extend(
                    sink_dead_letter(item, msg, self._s, error=f"gave up after {attempt} attempts",
                                     attempts=attempt, first_failure_ms=first_ms)
                    for item, msg in retry
                )
                break
            if not retry:
                break
            metrics.SINK_RETRIES.labels(pipeline=self._s.pipeline, step=self._s.stage).inc(len(retry))
            log.warning("kafka sink %s: %d records failed transiently; retry %d in %.2fs",
                        self._s.topic, len(retry), attempt, delay)
            time.sleep(delay or 0.0)
            attempt += 1
            for item, msg in retry:
                self._inflight.produce(item, msg)
            failures = self._inflight.settle()
        if dead:
            self._dead_letters(dead)

    def close(self) -> None:
        self.flush()


class ReliableKafkaSink(FixedPartitionedSink[Any, None]):
    """At-least-once Kafka sink (see module docstring); one partition per Kafka partition.

    With `partitions=None` (topic size unknown) there is one sink partition and
    librdkafka's key hash picks the Kafka partition.
    """

    def __init__(self, settings: KafkaSinkSettings, dead_letters: DeadLetters, partitions: int | None = None) -> None:
        self.settings = settings
        self.dead_letters = dead_letters
        self.partitions = partitions

    def list_parts(self) -> list[str]:
        pin_thread_state()
        return [f"{p:05d}" for p in range(self.partitions or 1)]

    def part_fn(self, item_key: str) -> int:
        return partition_for(item_key.encode(), self.partitions or 1)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ReliablePartition:
        partition = int(for_part) if self.partitions else None
        # dead letters and retries are labelled with the step Bytewax built this sink for
        return _ReliablePartition(replace(self.settings, stage=step_id), self.dead_letters, partition)
