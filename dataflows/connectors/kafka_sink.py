"""At-least-once Kafka sink with delivery callbacks, retries and dead letters.

Bytewax's `KafkaSink` flushes but never looks at delivery reports (an async
delivery failure is lost) and ignores `KafkaSinkMessage.partition`. This sink:

1. serialises each item (`kafka_common.to_out_message`: key = item.key,
   value = JSON, header `sf-event-id`); an item that cannot be serialised is a
   dead letter `UNSUPPORTED_TYPE`;
2. produces every item with a delivery callback (to `item.partition` when the
   item names one, else librdkafka's key hash: same key, same partition), then
   flushes: `write_batch` returns only when every record has a delivery report,
   so nothing is acknowledged (epoch closed, source offset snapshotted) before
   Kafka has it -> at-least-once;
3. transient failures (broker away, timeouts, leader moves) are produced again
   after the `RetryPolicy`'s backoff (exponential, jitter, cap), counting
   `streamforge_sink_retries_total`; after the last attempt, or at once for a
   permanent error (record too large...), the record becomes a `DeadLetter`
   with code `SINK_WRITE` (value and key as they would have been written,
   coords = the output topic) handed to `dead_letters` (a Kafka DLQ writer or
   a JSONL file).

Keyed `(str, item)` pairs are accepted too (the key is ignored).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Producer

from dataflows import metrics
from dataflows.connectors.kafka_common import OutMessage, is_transient, to_out_message
from dataflows.dead_letter import DeadLetter, ErrorCode, dead_letter
from dataflows.events import now_ms
from dataflows.retry import RetryPolicy

__all__ = ["DeadLetters", "KafkaSinkSettings", "ReliableKafkaSink", "sink_dead_letter", "unwrap_item"]

log = logging.getLogger(__name__)

DeadLetters = Callable[[Sequence[DeadLetter]], None]


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
    letter = dead_letter(
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
    metrics.DLQ_EVENTS.labels(pipeline=s.pipeline, stage=s.stage, error_code=code).inc()
    return letter


_Pending = tuple[Any, OutMessage]


class _ReliablePartition(StatelessSinkPartition[Any]):
    def __init__(self, s: KafkaSinkSettings, dead_letters: DeadLetters) -> None:
        self._s = s
        self._dead_letters = dead_letters
        self._producer = Producer(s.producer_config())

    def write_batch(self, items: list[Any]) -> None:
        dead: list[DeadLetter] = []
        pending: list[_Pending] = []
        for raw in items:
            item = unwrap_item(raw)
            try:
                pending.append((item, to_out_message(item)))
            except Exception as exc:  # noqa: BLE001 - an unusable item is a dead letter
                dead.append(sink_dead_letter(item, None, self._s, code=ErrorCode.UNSUPPORTED_TYPE, error=exc))
        first_ms = now_ms()
        delays = self._s.retry.delays()
        attempt = 0
        while pending:
            attempt += 1
            retry: list[_Pending] = []
            for item, msg, err in self._send(pending):
                if is_transient(err):
                    retry.append((item, msg))
                else:
                    dead.append(sink_dead_letter(item, msg, self._s, error=err, attempts=attempt,
                                                 first_failure_ms=first_ms))
            delay = next(delays, None) if retry else None
            if retry and delay is None:
                dead.extend(
                    sink_dead_letter(item, msg, self._s, error=f"gave up after {attempt} attempts",
                                     attempts=attempt, first_failure_ms=first_ms)
                    for item, msg in retry
                )
                retry = []
            if retry and delay is not None:
                metrics.SINK_RETRIES.labels(pipeline=self._s.pipeline, sink=self._s.stage).inc(len(retry))
                log.warning("kafka sink %s: %d records failed transiently; retry %d in %.2fs",
                            self._s.topic, len(retry), attempt, delay)
                time.sleep(delay)
            pending = retry
        if dead:
            self._dead_letters(dead)

    def _send(self, pending: list[_Pending]) -> list[tuple[Any, OutMessage, Any]]:
        """Produce all, wait for every delivery report; the failures."""
        failed: list[tuple[Any, OutMessage, Any]] = []
        reported: set[int] = set()
        for i, (item, msg) in enumerate(pending):

            def on_delivery(err: KafkaError | None, _m: Any, i: int = i, item: Any = item,
                            msg: OutMessage = msg) -> None:
                reported.add(i)
                if err is not None:
                    failed.append((item, msg, err))

            kwargs: dict[str, Any] = {"headers": list(msg.headers), "on_delivery": on_delivery}
            part = getattr(item, "partition", None)
            if isinstance(part, int) and not isinstance(part, bool):
                kwargs["partition"] = part
            while True:
                try:
                    self._producer.produce(self._s.topic, msg.value, msg.key, **kwargs)
                    break
                except BufferError:
                    self._producer.poll(0.05)
                except KafkaException as exc:
                    reported.add(i)
                    failed.append((item, msg, exc))
                    break
        try:
            # every message ends with a report within message.timeout.ms
            while self._producer.flush(self._s.delivery_timeout_s + 5) > 0:
                pass
        except KafkaException as exc:
            # fatal producer error (e.g. a broker that lost its state): start a new
            # producer; what has no delivery report yet is retried (at-least-once)
            log.warning("kafka sink %s: producer failed (%s); recreating it", self._s.topic, exc)
            self._producer = Producer(self._s.producer_config())
            transient = KafkaError(KafkaError._TRANSPORT, str(exc))
            failed.extend((item, msg, transient) for i, (item, msg) in enumerate(pending) if i not in reported)
        return failed

    def close(self) -> None:
        self._producer.flush(self._s.delivery_timeout_s)


class ReliableKafkaSink(DynamicSink[Any]):
    """At-least-once Kafka sink (see module docstring)."""

    def __init__(self, settings: KafkaSinkSettings, dead_letters: DeadLetters) -> None:
        self.settings = settings
        self.dead_letters = dead_letters

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ReliablePartition:
        return _ReliablePartition(self.settings, self.dead_letters)
