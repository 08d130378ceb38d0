"""Kafka dead-letter queue: one DLQ record per `DeadLetter`.

Record layout (what `streamforge dlq inspect/replay` and Kafka Connect tools read):

- key: the original record's key (`DeadLetter.key`, bytes as read; may be null);
- value: `DeadLetter.to_json()` (payload base64 inside, so any bytes survive);
- headers: `DeadLetter.connect_headers()` (`__connect.errors.*`, `sf-error-code`,
  `sf-event-id`, ...).

`KafkaDeadLetterWriter(letters)` produces and waits for every delivery,
retrying transient failures with the `RetryPolicy`; if the DLQ itself cannot be
written it raises (the flow crashes and replays: at-least-once, never a
silent drop). `KafkaDlqSink` is the same as a Bytewax `DynamicSink`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, Producer

from dataflows.connectors.kafka_common import is_transient
from dataflows.dead_letter import DeadLetter
from dataflows.retry import RetryExhausted, RetryPolicy

__all__ = ["DlqWriteError", "KafkaDeadLetterWriter", "KafkaDlqSink", "dlq_record"]


class DlqWriteError(RuntimeError):
    """Dead letters could not be written to the DLQ topic."""


def dlq_record(letter: DeadLetter) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of the DLQ record for `letter`."""
    return letter.key, letter.to_json().encode(), letter.connect_headers()


class KafkaDeadLetterWriter:
    """Writes dead letters to a Kafka topic, synchronously (delivery confirmed)."""

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
        self._timeout_s = delivery_timeout_s
        conf: dict[str, Any] = {
            "bootstrap.servers": ",".join(brokers),
            "message.timeout.ms": int(delivery_timeout_s * 1000),
            "message.max.bytes": 16 * 2**20,
            "linger.ms": 0,  # written synchronously: no batching wait
        }
        conf.update(add_config or {})
        self._producer = Producer(conf)

    def __call__(self, letters: Sequence[DeadLetter]) -> None:
        pending = list(letters)

        def attempt() -> None:
            nonlocal pending
            failed = self._send(pending)
            if failed:
                pending = [letter for letter, _ in failed]
                raise DlqWriteError(f"{len(failed)} dead letter(s) not delivered: {failed[0][1]}")

        try:
            self.retry.call(attempt, lambda exc: isinstance(exc, DlqWriteError))
        except RetryExhausted as exc:
            raise DlqWriteError(f"DLQ topic {self.topic!r}: {exc}") from exc

    def _send(self, letters: list[DeadLetter]) -> list[tuple[DeadLetter, KafkaError | str]]:
        failed: list[tuple[DeadLetter, KafkaError | str]] = []
        for letter in letters:
            key, value, headers = dlq_record(letter)

            def on_delivery(err: KafkaError | None, _msg: Any, letter: DeadLetter = letter) -> None:
                if err is not None:
                    failed.append((letter, err))

            while True:
                try:
                    self._producer.produce(self.topic, value, key, headers=headers, on_delivery=on_delivery)
                    break
                except BufferError:
                    self._producer.poll(0.1)
        remaining = self._producer.flush(self._timeout_s + 5)
        if remaining:
            failed.extend((letter, "flush timed out") for letter in letters[-remaining:])
        if any(not is_transient(err) for _, err in failed if isinstance(err, KafkaError)):
            permanent = next(e for _, e in failed if isinstance(e, KafkaError) and not is_transient(e))
            raise RuntimeError(f"DLQ topic {self.topic!r}: permanent error {permanent}")
        return failed

    def close(self) -> None:
        self._producer.flush(self._timeout_s)


class _DlqPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, writer: KafkaDeadLetterWriter) -> None:
        self._writer = writer

    def write_batch(self, items: list[DeadLetter]) -> None:
        self._writer(items)

    def close(self) -> None:
        self._writer.close()


class KafkaDlqSink(DynamicSink[DeadLetter]):
    """A Bytewax sink writing `DeadLetter`s to a Kafka DLQ topic."""

    def __init__(self, brokers: Sequence[str], topic: str, *, retry: RetryPolicy | None = None) -> None:
        self.brokers = list(brokers)
        self.topic = topic
        self.retry = retry

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DlqPartition:
        return _DlqPartition(KafkaDeadLetterWriter(self.brokers, self.topic, retry=self.retry))
