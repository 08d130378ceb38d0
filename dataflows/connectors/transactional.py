"""TransactionalWriter: exactly-once Kafka output from an at-least-once Bytewax flow.

Bytewax replays the resume epoch after a crash, and the only epoch hook a sink
has is `StatefulSinkPartition.snapshot()` (called at each epoch close; the
recovery rows are written after it returns). The writer (DESIGN.md §4):

1. is a `FixedPartitionedSink` with one partition per output Kafka partition;
   partition p owns one transactional producer with the stable
   `transactional.id = f"{prefix}.{step_id}.{p}"` and writes only to Kafka
   partition p;
2. `write_batch` begins a transaction if none is open and produces each record
   (header `sf-event-id` = the item's event id); delivery callbacks track the
   highest offset written;
3. `snapshot()` commits the transaction and returns
   `{"committed_end": {p: next_offset}, "pending_skip": {p: {event_id: n}}}`;
4. `build_part(resume_state)`: `init_transactions()` (fences a zombie with the
   same id: its open transaction is aborted, or, on Tansu, made visible), then
   reads partition p `read_committed` from `committed_end` (from the start of
   the partition without a resume state) to the end and counts the
   `sf-event-id`s found there: those records were committed after the last
   durable snapshot. While the flow replays, a record whose id is in that
   multiset is skipped (and removed from it), so it is written once.
   The replay of what a zombie wrote may span several epochs of the new run;
   the ids not met yet are part of the snapshot (`pending_skip`) and join the
   set on the next resume (without that, a second crash after the first
   snapshot would forget them: the crash loop test caught exactly this).
   An id stays pending until the replay meets it (a bounded set: at most
   what was committed beyond one durable snapshot).

Guarantee: every item reaching the sink is in the read_committed output
exactly once, across any number of crashes (kill -9 included) and restarts
from the recovery directory, as long as:

- the flow is deterministic up to the sink: a replay produces the same items
  with the same event ids (ids derive from source coordinates, DESIGN.md §2);
- event ids are unique per output record (repeated ids are counted, so a
  legitimately repeated id is handled when replay repeats it identically);
- nothing else writes to the output topic's partitions (the scan would count
  foreign ids), and without a resume state (fresh recovery directory) the
  whole partition is scanned: records already there by id are not rewritten;
- `transaction.timeout.ms` (`transaction-timeout`) is well above the epoch
  interval plus the restart time, so a transaction is not aborted by the
  broker before `snapshot()` commits it; consumers read `read_committed`.

Failures: a record that cannot be serialised or is refused for good (too
large) becomes a dead letter; a commit that fails transiently is retried
with the `RetryPolicy` (an abortable error aborts, re-produces the records of
the transaction and commits again); when the retries are exhausted, or the
producer is fenced (a newer instance took over), `snapshot()` raises: the
flow stops and a restart replays from the last durable snapshot, which is
exactly what the writer is built for. Dead letters are written outside the
transaction (at-least-once).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from dataflows import metrics
from dataflows.connectors.kafka_common import (
    EVENT_ID_HEADER,
    OutMessage,
    header_value,
    is_transient,
    partition_for,
)
from dataflows.connectors.kafka_sink import (
    DeadLetters,
    KafkaSinkSettings,
    encode_batch,
    sink_dead_letter,
)
from dataflows.faults import fault_point

__all__ = ["ProducerFencedError", "TransactionalSettings", "TransactionalWriter", "scan_committed"]

log = logging.getLogger(__name__)

State = dict[str, dict[int, Any]]


class ProducerFencedError(RuntimeError):
    """This writer's transactions cannot commit (fenced or retries exhausted)."""


@dataclass(frozen=True)
class TransactionalSettings:
    sink: KafkaSinkSettings
    partitions: int
    transactional_id_prefix: str
    transaction_timeout_s: float = 60.0
    commit_timeout_s: float = 30.0
    scan_timeout_s: float = 60.0


def scan_committed(
    brokers: tuple[str, ...] | list[str], topic: str, partition: int, start: int | None, timeout_s: float
) -> tuple[Counter[str], int]:
    """Event ids committed in `topic[partition]` from `start` (None: beginning) to the end.

    Returns the ids (counted) and the offset the read reached (end of partition).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": ",".join(brokers),
            "group.id": "streamforge-txn-scan",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 10,
            "auto.offset.reset": "earliest",
        }
    )
    ids: Counter[str] = Counter()
    end = start or 0
    try:
        consumer.assign([TopicPartition(topic, partition, start or 0)])
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}[{partition}] to its end took over {timeout_s:g}s")
            for msg in consumer.consume(1000, 0.02):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return ids, max(end, msg.offset() or 0)
                    raise KafkaException(err)
                end = max(end, (msg.offset() or 0) + 1)
                eid = header_value(msg.headers(), EVENT_ID_HEADER)
                if eid is not None:
                    ids[eid.decode()] += 1
    finally:
        consumer.close()


class _TxPartition(StatefulSinkPartition[Any, State]):
    def __init__(
        self,
        s: TransactionalSettings,
        dead_letters: DeadLetters,
        step_id: str,
        partition: int,
        start: int | None,
        pending: dict[str, int] | None = None,
    ) -> None:
        self._s = s
        self._k = s.sink
        self._dead_letters = dead_letters
        self._partition = partition
        self.transactional_id = f"{s.transactional_id_prefix}.{step_id}.{partition}"
        self._producer = Producer(
            self._k.producer_config(
                **{
                    "transactional.id": self.transactional_id,
                    "transaction.timeout.ms": int(s.transaction_timeout_s * 1000),
                }
            )
        )
        self._producer.init_transactions(s.commit_timeout_s)
        found, self._end = scan_committed(self._k.brokers, self._k.topic, partition, start, s.scan_timeout_s)
        self.skip: Counter[str] = Counter(pending or {}) + found
        self.skipped = 0
        self._open = False
        self._buffer: list[tuple[Any, OutMessage]] = []
        self._failed: dict[str, KafkaError] = {}  # event id -> delivery error
        self._written_end = self._end

    # -- writing ---------------------------------------------------------
    def write_batch(self, values: list[Any]) -> None:
        encoded, dead = encode_batch(values, self._k)
        for item, msg in encoded:
            if self.skip.get(msg.event_id, 0) > 0:
                self._consume_skip(msg.event_id)
                continue
            if not self._open:
                self._producer.begin_transaction()
                self._open = True
            err = self._produce(msg)
            if err is None:
                self._buffer.append((item, msg))
            else:
                dead.append(sink_dead_letter(item, msg, self._k, error=err, partition=self._partition))
        self._producer.poll(0)
        if dead:
            self._dead_letters(dead)

    def _consume_skip(self, event_id: str) -> None:
        self.skip[event_id] -= 1
        if self.skip[event_id] <= 0:
            del self.skip[event_id]
        self.skipped += 1

    def _on_delivery(self, err: KafkaError | None, m: Any) -> None:
        if err is not None:
            eid = header_value(m.headers(), EVENT_ID_HEADER) or b""
            self._failed[eid.decode()] = err
        elif m.offset() is not None and m.offset() >= self._written_end:
            self._written_end = m.offset() + 1

    def _produce(self, msg: OutMessage) -> KafkaException | None:
        while True:
            try:
                self._producer.produce(
                    self._k.topic,
                    msg.value,
                    msg.key,
                    partition=self._partition,
                    headers=list(msg.headers),
                    on_delivery=self._on_delivery,
                )
                return None
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                return exc

    # -- committing ------------------------------------------------------
    def snapshot(self) -> State:
        if self._open:
            self._commit()
        return {
            "committed_end": {self._partition: self._end},
            "pending_skip": {self._partition: dict(self.skip)},
        }

    def _commit(self) -> None:
        delays = self._k.retry.delays()
        attempt = 0
        while True:
            attempt += 1
            try:
                fault_point("kafka.commit")
                self._producer.commit_transaction(self._s.commit_timeout_s)
                self._end = self._written_end
                self._buffer.clear()
                self._failed.clear()
                self._open = False
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                                  KafkaError.INVALID_PRODUCER_EPOCH):
                    raise ProducerFencedError(f"{self.transactional_id}: fenced: {err.str()}") from exc
                delay = next(delays, None)
                if delay is None or not (err.txn_requires_abort() or is_transient(err)):
                    raise ProducerFencedError(
                        f"{self.transactional_id}: commit failed after {attempt} attempt(s): {err.str()}"
                    ) from exc
                metrics.SINK_RETRIES.labels(pipeline=self._k.pipeline, sink=self._k.stage).inc()
                log.warning("%s: commit failed (%s); retry %d in %.2fs", self.transactional_id, err.str(),
                            attempt, delay)
                time.sleep(delay)
                if err.txn_requires_abort():
                    self._abort_and_resend()

    def _abort_and_resend(self) -> None:
        self._producer.abort_transaction(self._s.commit_timeout_s)
        permanent = {eid: err for eid, err in self._failed.items() if not is_transient(err)}
        self._failed.clear()
        dead = [
            sink_dead_letter(item, msg, self._k, error=permanent[msg.event_id], partition=self._partition)
            for item, msg in self._buffer
            if msg.event_id in permanent
        ]
        keep = [(item, msg) for item, msg in self._buffer if msg.event_id not in permanent]
        self._buffer = []
        self._producer.begin_transaction()
        for item, msg in keep:
            err = self._produce(msg)
            if err is None:
                self._buffer.append((item, msg))
            else:
                dead.append(sink_dead_letter(item, msg, self._k, error=err, partition=self._partition))
        if dead:
            self._dead_letters(dead)

    def close(self) -> None:
        if self._open:
            self._commit()


class TransactionalWriter(FixedPartitionedSink[Any, State]):
    """Exactly-once Kafka sink; feed it `(key, item)` pairs (see module docstring)."""

    def __init__(self, settings: TransactionalSettings, dead_letters: DeadLetters) -> None:
        if settings.partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.settings = settings
        self.dead_letters = dead_letters

    def list_parts(self) -> list[str]:
        return [f"{p:05d}" for p in range(self.settings.partitions)]

    def part_fn(self, item_key: str) -> int:
        return partition_for(item_key.encode(), self.settings.partitions)

    def build_part(self, step_id: str, for_part: str, resume_state: State | None) -> _TxPartition:
        partition = int(for_part)
        state = resume_state or {}
        start = state.get("committed_end", {}).get(partition)
        pending = state.get("pending_skip", {}).get(partition)
        return _TxPartition(self.settings, self.dead_letters, step_id, partition, start, pending)
