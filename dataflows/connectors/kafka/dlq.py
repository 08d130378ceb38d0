"""Kafka dead-letter queue: one DLQ record per `DeadLetter`.

Record layout (what `streamforge dlq inspect/replay` and Kafka Connect tools read):

- key: the original record's key (`DeadLetter.key`, bytes as read; may be null);
- value: `DeadLetter.to_json()` (payload base64 inside, so any bytes survive);
- headers: `DeadLetter.connect_headers()` (`__connect.errors.*`, `sf-error-code`,
  `sf-event-id`, ...).

`KafkaDeadLetterWriter(letters)` produces and waits for every delivery,
retrying transient failures with the `RetryPolicy`; if the DLQ itself cannot be
written it raises (the flow crashes and replays: at-least-once, never a
silent drop). `KafkaDlqSink` is the Bytewax sink: it produces asynchronously
and settles every delivery at `snapshot()` (epoch close), before the epoch's
source offsets become durable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from dataflows.connectors.kafka.common import OutMessage, is_transient
from dataflows.connectors.kafka.sink import InFlight, KafkaSinkSettings, unwrap_item
from dataflows.dead_letter import DeadLetter
from dataflows.flow.threads import pin_thread_state
from dataflows.retry import RetryPolicy

__all__ = ["DlqWriteError", "KafkaDeadLetterWriter", "KafkaDlqSink", "dlq_message"]


class DlqWriteError(RuntimeError):
    """Dead letters could not be written to the DLQ topic."""


def dlq_message(letter: DeadLetter) -> OutMessage:
    """The DLQ record of `letter`: original key, JSON envelope, Connect headers."""
    return OutMessage(letter.key, letter.to_json().encode(), tuple(letter.connect_headers()), letter.event_id)


class KafkaDeadLetterWriter:
    """Writes dead letters to a Kafka topic: `send` (async) then `settle` (confirmed)."""

    def __init__(
        self,
        brokers: Sequence[str],
        topic: str,
        *,
        retry: RetryPolicy | None = None,
        delivery_timeout_s: float = 30.0,
        add_config: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.retry = retry or RetryPolicy()
        settings = KafkaSinkSettings(
            brokers=tuple(brokers),
            topic=topic,
            pipeline="",
            delivery_timeout_s=delivery_timeout_s,
            add_config={"message.max.bytes": 16 * 2**20, **(add_config or {})},
        )
        self._inflight = InFlight(settings, None)
        self._lock = threading.Lock()

    def __call__(self, letters: Sequence[DeadLetter]) -> None:
        """Write and wait until every letter is in the topic (DlqWriteError if not). Safe to
        call from several worker threads: a sink's partitions in one process share it."""
        with self._lock:
            self.send(letters)
            self.settle()

    def send(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            self._inflight.produce(letter, dlq_message(letter))
        self._inflight.producer.poll(0)

    def settle(self) -> None:
        """Wait for every delivery, retrying transient failures; DlqWriteError at the end."""
        delays = self.retry.delays()
        failures = self._inflight.settle()
        attempt = 1
        while failures:
            permanent = [err for _, _, err in failures if not is_transient(err)]
            delay = next(delays, None)
            if permanent or delay is None:
                err = permanent[0] if permanent else failures[0][2]
                raise DlqWriteError(
                    f"DLQ topic {self.topic!r}: {len(failures)} dead letter(s) not written "
                    f"after {attempt} attempt(s): {err}"
                )
            time.sleep(delay)
            attempt += 1
            for letter, msg, _ in failures:
                self._inflight.produce(letter, msg)
            failures = self._inflight.settle()

    def close(self) -> None:
        self.settle()


class _DlqPartition(StatefulSinkPartition[DeadLetter, None]):
    def __init__(self, writer: KafkaDeadLetterWriter) -> None:
        self._writer = writer

    def write_batch(self, values: list[DeadLetter]) -> None:
        self._writer.send([unwrap_item(v) for v in values])

    def snapshot(self) -> None:
        self._writer.settle()  # epoch close: every dead letter is in the topic
        return None

    def close(self) -> None:
        self._writer.close()


class KafkaDlqSink(FixedPartitionedSink[DeadLetter, None]):
    """A Bytewax sink writing `DeadLetter`s to a Kafka DLQ topic (one partition;
    feed it `(key, letter)` pairs, as `pipelines.io.write_output` does)."""

    def __init__(self, brokers: Sequence[str], topic: str, *, retry: RetryPolicy | None = None) -> None:
        self.brokers = list(brokers)
        self.topic = topic
        self.retry = retry

    def list_parts(self) -> list[str]:
        pin_thread_state()
        return ["dlq"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _DlqPartition:
        return _DlqPartition(KafkaDeadLetterWriter(self.brokers, self.topic, retry=self.retry))
