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
   and header `sf-writer` = its transactional id); delivery callbacks track the
   highest offset written;
3. `snapshot()` commits the transaction and returns
   `{"committed_end": {p: next_offset}, "pending_skip": {p: {event_id: [n, expires_at]}},
   "partitions": {p: n}}` (n: the sink's partition count); the first partition of a worker
   to snapshot at an epoch close commits the worker's other open partitions with it,
   concurrently (`_commit_with_worker`), so their round trips overlap;
4. `build_part(resume_state)`: refuses a resume state written for another
   partition count (`OutputPartitionsChanged`: records are routed by
   crc32(key) mod n, a replay would reach partitions whose skip sets do not
   hold them); `init_transactions()` (fences a zombie with the same id: its
   open transaction is aborted, or, on Tansu, made visible); then
   `transactional_scan.scan_own_records` reads partition p `read_committed`
   from `committed_end` (without a resume state: from `fresh-scan-window`
   before now) to the high watermark, waiting (bounded by `scan-timeout`) for
   a foreign open transaction to end, and counts the `sf-event-id`s of the
   records THIS writer wrote there: those records were committed after the
   last durable snapshot. While the flow replays, a record whose id is in that
   multiset is skipped (and removed from it), so it is written once.
   The replay of what a zombie wrote may span several epochs of the new run;
   the ids not met yet are part of the snapshot (`pending_skip`) and join the
   set on the next resume (without that, a second crash after the first
   snapshot would forget them: the crash loop test caught exactly this).
   An id stays pending until the replay meets it or its offset window
   expires (`transactional_scan.SkipSet`).

Guarantee: every item reaching the sink is in the read_committed output
exactly once, across any number of crashes (kill -9 included) and restarts
from the recovery directory, as long as:

- the flow is deterministic up to the sink: a replay produces the same items
  with the same event ids (ids derive from source coordinates, DESIGN.md §2);
- event ids are unique per output record (repeated ids are counted, so a
  legitimately repeated id is handled when replay repeats it identically);
- nothing else writes to the output topic's partitions (foreign records are
  not counted, but a foreign open transaction stalls the scan until
  `scan-timeout`); without a resume state (fresh recovery directory) only
  this writer's records of the last `fresh-scan-window` are skipped, so a
  restart after a crash before the first durable snapshot must come within
  that window;
- the output topic keeps what the scan needs: not compacted, retention
  above the restore window (checked at start by `from_config.py`);
- `transaction.timeout.ms` (`transaction-timeout`) is well above the epoch
  interval plus the restart time, so a transaction is not aborted by the
  broker before `snapshot()` commits it; consumers read `read_committed`.

Failures: only a record that cannot be serialised or is refused for good
(too large, invalid: `common.is_per_record`) becomes a dead letter.
After an abortable error (a delivery timeout, a broker refusal mid-epoch)
librdkafka fails every later `produce()` of the transaction with `_STATE`
until `abort_transaction()`: those records stay in the transaction; at the
commit the writer aborts and re-sends EVERY record of the transaction (it
keeps them all until the commit), then commits again, within the
`RetryPolicy`. A commit that fails transiently is retried the same way. An
abort that fails or times out (`TransactionAbortError`), exhausted retries,
and a fenced producer (`ProducerFencedError`) raise a `WriterRestartError`
out of `snapshot()`: the process exits and a restart replays from the last
durable snapshot, which is exactly what the writer is built for. So does a
commit the broker acknowledged but does not show: after each commit the
writer reads the transaction's records back read_committed
(`transactional_scan.CommitCheck`, `sink.verify-commits`, on by default) and
raises `CommitNotVisibleError` if any is missing (read as aborted, or never
stored) or they stay behind the last stable offset for `transaction-timeout`
(a broker slow to write its markers is waited for: a restart would only
wait for the same last stable offset, from a longer way back). Dead
letters are written after the transaction committed (outside it, at least
once), so a fenced or restarting writer never writes any.

Partitions are built by Bytewax (0.21.1 `src/outputs.rs`
`partitioned_output`): those with a resume state when the state loads, at
the start; those without one lazily, when their first item arrives, inside
the write step, while the worker's other transactions are open. The sink
is not told which worker owns which partition (`calc_primaries`,
`src/timely.rs`), so it cannot open their producers itself. What it does at
the start instead: `list_parts()` (called while the flow is built, before
any item) scans every partition's fresh window (`prescan`), so a lazy build
only fences its zombie (`init_transactions`, at most `commit-timeout`) and
reads what arrived since; and `scan-timeout` + `commit-timeout` must be
below `transaction-timeout` (refused at start otherwise), so a lazy build
whose scan stalls cannot outlast the worker's open transactions (`scan-
timeout` bounds a stall of the scan, not a slow read that makes progress).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, KafkaException, Producer

from dataflows import metrics
from dataflows.config import ConfigError
from dataflows.connectors.kafka.common import (
    WRITER_HEADER,
    OutMessage,
    is_fenced,
    is_per_record,
    is_transient,
    partition_for,
)
from dataflows.connectors.kafka.sink import (
    DeadLetters,
    KafkaSinkSettings,
    encode_batch,
    sink_dead_letter,
)
from dataflows.connectors.kafka.transactional_scan import (
    CommitCheck,
    CommitNotVisibleError,
    SkipSet,
    TailScanError,
    WriterRestartError,
    exactly_once_writer,
    scan_own_records,
    scan_writers,
)
from dataflows.dead_letter import DeadLetter
from dataflows.faults import fault_point
from dataflows.flow.threads import pin_thread_state

__all__ = [
    "CommitNotVisibleError",
    "OutputPartitionsChanged",
    "ProducerFencedError",
    "TailScanError",
    "TransactionAbortError",
    "TransactionalSettings",
    "TransactionalWriter",
    "WriterRestartError",
    "exactly_once_writer",
]

log = logging.getLogger(__name__)

State = dict[str, dict[int, Any]]


class ProducerFencedError(WriterRestartError):
    """This writer's transactions cannot commit (fenced, fatal, or retries exhausted)."""


class TransactionAbortError(WriterRestartError):
    """`abort_transaction()` failed or timed out: the transaction's state is unknown."""


class OutputPartitionsChanged(ConfigError):
    """The resume state was written for another output partition count."""


@dataclass(frozen=True)
class TransactionalSettings:
    sink: KafkaSinkSettings
    partitions: int
    transactional_id_prefix: str
    transaction_timeout_s: float = 60.0
    commit_timeout_s: float = 30.0
    scan_timeout_s: float = 20.0
    fresh_scan_window_s: float = 900.0
    skip_window: int = 1_000_000
    verify_commits: bool = True


def partitions_changed_message(topic: str, old: int, new: int) -> str:
    return (
        f"sink.topic {topic!r}: the recovery state was written for {old} output partitions, the sink now "
        f"has {new} (the topic's partition count, or sink.partitions). Records are routed by crc32(key) "
        f"mod the partition count, so the replay would write records to partitions whose exactly-once "
        f"skip sets do not hold them (duplicates). To migrate: set `sink.partitions: {old}` to keep "
        f"writing the first {old} partitions; or drain the pipeline (let it consume its input, take a "
        f"savepoint, stop it) and start it with a fresh recovery state (`streamforge run --fresh`) or on "
        f"a new output topic."
    )


_Record = tuple[Any, OutMessage]


def _nothing() -> None:
    pass


def transactional_id(s: TransactionalSettings, step_id: str, partition: int) -> str:
    """The stable transactional id of the writer of output partition `partition`."""
    return f"{s.transactional_id_prefix}.{step_id}.{partition}"


def transactional_producer(s: TransactionalSettings, transactional_id: str) -> Producer:
    """The producer of one partition's transactions, not initialised: it connects to the
    brokers in the background, but claims nothing (no `InitProducerId`, so no fencing) until
    `init_transactions()`."""
    return Producer(s.sink.producer_config(**{
        "transactional.id": transactional_id,
        "transaction.timeout.ms": int(s.transaction_timeout_s * 1000),
    }))


def _writers_of(prefix: str, partition: int) -> Callable[[str], bool]:
    """Accepts the transactional ids `{prefix}{step_id}.{partition}` (any step id)."""
    suffix = f".{partition}"
    return lambda writer: writer.startswith(prefix) and writer.endswith(suffix)


class _TxPartition(StatefulSinkPartition[Any, State]):
    def __init__(
        self,
        s: TransactionalSettings,
        dead_letters: DeadLetters,
        step_id: str,
        partition: int,
        start: int | None,
        pending: dict[str, Any] | None = None,
        prescan: tuple[Counter[str], int] | None = None,
        producer: Producer | None = None,
    ) -> None:
        """`prescan`: (ids, end) of this writer's fresh-window scan made at start, without a
        resume state: only what arrived after `end` is read now. `producer`: one made with
        `transactional_producer` for this partition's id, not initialised yet (warm)."""
        # this sink's partitions built on the same worker thread, by partition (see `_commit_with_worker`)
        self.worker_partitions: dict[int, _TxPartition] = {partition: self}
        self._s = s
        self._k = s.sink
        self._dead_letters = dead_letters
        self._partition = partition
        self.transactional_id = transactional_id(s, step_id, partition)
        self.on_snapshot: Callable[[], None] = _nothing  # set by the writer that builds it
        self._writer_header = (WRITER_HEADER, self.transactional_id.encode())
        self._producer = producer or transactional_producer(s, self.transactional_id)
        self._producer.init_transactions(s.commit_timeout_s)
        known: Counter[str] = Counter()
        if start is None and prescan is not None:
            known, start = prescan
        found, _begin, self._end = scan_own_records(
            self._k.brokers, self._k.topic, partition, start, self.transactional_id,
            timeout_s=s.scan_timeout_s, fresh_window_s=s.fresh_scan_window_s,
        )
        found += known
        expires_at = self._end + s.skip_window
        self._skip = SkipSet.from_state(pending, expires_at)
        self._skip.add(found, expires_at)
        self.skipped = 0
        self._open = False
        self._needs_abort = False
        self._records: list[_Record] = []  # every record of the open transaction
        self._generation = 0  # bumped at each abort: older delivery reports are ignored
        self._failed: dict[int, KafkaError] = {}  # index in _records -> delivery error
        self._refused: set[int] = set()  # indexes in _records refused for good by produce()
        self._dead: list[DeadLetter] = []  # written once the transaction committed
        self._written_end = self._end
        self._check = CommitCheck(self._k.brokers, self._k.topic, partition, self.transactional_id) \
            if s.verify_commits else None

    @property
    def skip(self) -> Counter[str]:
        """The ids still to skip (counted)."""
        return self._skip.counts

    # -- writing ---------------------------------------------------------
    def write_batch(self, values: list[Any]) -> None:
        encoded, dead = encode_batch(values, self._k)
        self._dead.extend(dead)
        for item, msg in encoded:
            if self._skip.take(msg.event_id):
                self.skipped += 1
                continue
            if not self._open:
                self._producer.begin_transaction()
                self._open = True
            self._records.append((item, msg))
            if not self._needs_abort:
                self._send(len(self._records) - 1)
        self._producer.poll(0)

    def _send(self, index: int) -> None:
        """Produce record `index` of the transaction; a per-record refusal makes it a dead letter."""
        item, msg = self._records[index]
        err = self._produce(index, msg)
        if err is None:
            return
        if is_fenced(err):
            raise ProducerFencedError(f"{self.transactional_id}: fenced: {err}") from err
        if is_per_record(err):
            self._dead.append(sink_dead_letter(item, msg, self._k, error=err, partition=self._partition))
            self._refused.add(index)  # not part of the transaction any more
        else:  # _STATE (abortable transaction), or the transaction is otherwise unusable
            self._needs_abort = True

    def _delivered(self, generation: int, index: int, err: KafkaError | None, m: Any) -> None:
        """The delivery report of record `index` produced in attempt `generation`."""
        if generation != self._generation:
            return  # a report of an aborted attempt
        if err is not None:
            self._failed[index] = err
        elif m.offset() is not None:
            offset = m.offset()
            if offset >= self._written_end:
                self._written_end = offset + 1
            if self._check is not None:
                self._check.delivered(offset)

    def _produce(self, index: int, msg: OutMessage) -> KafkaException | None:
        # to_out_message never copies an item's sf-writer header: this writer's is the one
        headers: list[tuple[str, str | bytes | None]] = [*msg.headers, self._writer_header]
        on_delivery = partial(self._delivered, self._generation, index)
        while True:
            try:
                self._producer.produce(
                    self._k.topic, msg.value, msg.key, partition=self._partition, headers=headers,
                    on_delivery=on_delivery,
                )
                return None
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                return exc

    # -- committing ------------------------------------------------------
    def snapshot(self) -> State:
        self.on_snapshot()
        if self._open:
            try:
                self._commit_with_worker()
            except WriterRestartError as exc:
                # Bytewax 0.21.1 aborts the process on an exception out of `snapshot()` ("thread
                # caused non-unwinding panic") without printing it: say why before it does.
                log.error("%s", exc)
                raise
        self._flush_dead()
        if self._skip.expire(self._end):
            log.warning("%s: the replay never met %d skipped id(s) within their offset window (a "
                        "non-deterministic replay?); dropped", self.transactional_id, self._skip.dropped)
        return {
            "committed_end": {self._partition: self._end},
            "pending_skip": {self._partition: self._skip.to_state()},
            "partitions": {self._partition: self._s.partitions},
        }

    def _commit_with_worker(self) -> None:
        """Commit this transaction and, concurrently, the open ones of this sink's other
        partitions on the same worker (thread): Bytewax snapshots every partition of a worker at
        the same epoch close, so they are due now, and each waits on its broker round trips
        (commit, then the read-back) while the others do. A partition committed before its own
        `snapshot()` is the case a crash between two snapshots makes anyway: its records are
        committed but not yet in the durable state, and the next build's scan skips them."""
        others = [p for p in self.worker_partitions.values() if p is not self and p._open]
        if not others or self.worker_partitions.get(self._partition) is not self:  # alone, or replaced
            self._commit()
            return
        with ThreadPoolExecutor(max_workers=len(others) + 1, thread_name_prefix="sf-commit") as pool:
            futures = [pool.submit(p._commit) for p in (self, *others)]
        errors = [exc for exc in (f.exception() for f in futures) if exc is not None]
        if errors:
            raise errors[0]

    def _flush_dead(self) -> None:
        if self._dead:
            dead, self._dead = self._dead, []
            self._dead_letters(dead)

    def _commit(self) -> None:
        delays = self._k.retry.delays()
        attempt = 0
        while True:
            attempt += 1
            if self._needs_abort:
                self._abort_and_resend()
            if self._needs_abort:  # the re-send was refused again: never commit a partial transaction
                delay = next(delays, None)
                if delay is None:
                    raise ProducerFencedError(f"{self.transactional_id}: the transaction's records were refused "
                                              f"after {attempt} attempt(s); restart from the last snapshot")
                time.sleep(delay)
                continue
            try:
                fault_point("kafka.commit")
                self._producer.commit_transaction(self._s.commit_timeout_s)
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if is_fenced(err):
                    raise ProducerFencedError(f"{self.transactional_id}: fenced: {err.str()}") from exc
                delay = next(delays, None)
                if delay is None or not (err.txn_requires_abort() or is_transient(err)):
                    raise ProducerFencedError(
                        f"{self.transactional_id}: commit failed after {attempt} attempt(s): {err.str()}; "
                        f"restart from the last snapshot"
                    ) from exc
                metrics.SINK_RETRIES.labels(pipeline=self._k.pipeline, step=self._k.stage).inc()
                log.warning("%s: commit failed (%s); retry %d in %.2fs", self.transactional_id, err.str(),
                            attempt, delay)
                time.sleep(delay)
                self._needs_abort = self._needs_abort or err.txn_requires_abort()
                continue
            if self._check is not None:
                self._check.verify(self._s.transaction_timeout_s)
            self._end = self._written_end
            self._records.clear()
            self._failed.clear()
            self._refused.clear()
            self._open = False
            return

    def _abort_and_resend(self) -> None:
        """Abort, dead-letter the records refused for good, re-send every other record."""
        try:
            self._producer.abort_transaction(self._s.commit_timeout_s)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if is_fenced(err):
                raise ProducerFencedError(f"{self.transactional_id}: fenced: {err.str()}") from exc
            raise TransactionAbortError(
                f"{self.transactional_id}: abort_transaction failed ({err.str()}); the transaction's state "
                f"is unknown: restart from the last snapshot"
            ) from exc
        self._generation += 1
        if self._check is not None:
            self._check.reset()
        failed, self._failed = self._failed, {}
        keep: list[_Record] = []
        for i, (item, msg) in enumerate(self._records):
            if i in self._refused:
                continue  # already a dead letter
            if i in failed and is_per_record(failed[i]):
                self._dead.append(sink_dead_letter(item, msg, self._k, error=failed[i], partition=self._partition))
            else:
                keep.append((item, msg))
        self._records, self._refused = keep, set()
        self._needs_abort = False
        self._producer.begin_transaction()
        for i in range(len(self._records)):
            if self._needs_abort:
                break
            self._send(i)

    def close(self) -> None:
        if self._open:
            self._commit()
        self._flush_dead()
        if self._check is not None:
            self._check.close()


class TransactionalWriter(FixedPartitionedSink[Any, State]):
    """Exactly-once Kafka sink; feed it `(key, item)` pairs (see module docstring)."""

    def __init__(self, settings: TransactionalSettings, dead_letters: DeadLetters) -> None:
        if settings.partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.settings = settings
        self.dead_letters = dead_letters
        self._lock = threading.Lock()
        self._prescanned: dict[int, tuple[dict[str, Counter[str]], int]] | None = None
        self._by_worker: dict[int, dict[int, _TxPartition]] = {}  # thread id -> its partitions
        self._warm: dict[int, Producer] | None = None  # partition -> producer (`_take_warm`)

    def list_parts(self) -> list[str]:
        """All partitions; first (once per process, at the flow's start) scans every partition's
        fresh window for this writer's records (`prescan`)."""
        pin_thread_state()
        self.prescan()
        return [f"{p:05d}" for p in range(self.settings.partitions)]

    def prescan(self) -> None:
        """Scan each partition's `fresh-scan-window` now, for every writer of this prefix: a
        partition Bytewax builds lazily without a resume state (when its first item arrives,
        inside the write step) then reads only what came since, instead of the whole window
        while the worker's other transactions wait. The prescan does not wait for the last
        stable offset (a killed run's open transaction is only fenced by `init_transactions()`
        in `build_part`): it stops there, and the build's own scan reads on from that offset."""
        with self._lock:
            if self._prescanned is not None:
                return
            s, prefix = self.settings, self.settings.transactional_id_prefix + "."
            self._prescanned = {}
            for p in range(s.partitions):
                found, _begin, end = scan_writers(
                    s.sink.brokers, s.sink.topic, p, None, _writers_of(prefix, p),
                    timeout_s=s.scan_timeout_s, fresh_window_s=s.fresh_scan_window_s, wait_stable=False,
                )
                self._prescanned[p] = (found, end)

    def _take_prescan(self, step_id: str, partition: int) -> tuple[Counter[str], int] | None:
        with self._lock:
            scanned = (self._prescanned or {}).pop(partition, None)
        if scanned is None:
            return None
        found, end = scanned
        return found.get(transactional_id(self.settings, step_id, partition), Counter()), end

    def _take_warm(self, step_id: str, partition: int) -> Producer | None:
        """The warm producer of `partition`, if any. The first build in this process (when the
        step id becomes known) starts one for every other partition: each connects in the
        background while the builds before it initialise, so their `init_transactions()` finds
        its connections up (about 3 ms instead of 50 ms or more on Tansu). Partitions that
        another worker or process owns never use theirs: the first `snapshot()` drops them
        (`_drop_warm`); a producer that is not initialised claims nothing (no fencing)."""
        with self._lock:
            if self._warm is None:
                self._warm = {p: transactional_producer(self.settings, transactional_id(self.settings, step_id, p))
                              for p in range(self.settings.partitions) if p != partition}
                return None
            return self._warm.pop(partition, None)

    def _drop_warm(self) -> None:
        with self._lock:
            unused, self._warm = self._warm, {}
        if unused:
            unused.clear()  # each one's librdkafka instance is destroyed with its last reference

    def part_fn(self, item_key: str) -> int:
        return partition_for(item_key.encode(), self.settings.partitions)

    def build_part(self, step_id: str, for_part: str, resume_state: State | None) -> _TxPartition:
        partition = int(for_part)
        state = resume_state or {}
        written_for = state.get("partitions", {}).get(partition)
        if written_for is not None and written_for != self.settings.partitions:
            raise OutputPartitionsChanged(
                partitions_changed_message(self.settings.sink.topic, written_for, self.settings.partitions)
            )
        start = state.get("committed_end", {}).get(partition)
        pending = state.get("pending_skip", {}).get(partition)
        prescan = self._take_prescan(step_id, partition)  # taken (and dropped) either way
        if start is not None:
            prescan = None
        producer = self._take_warm(step_id, partition)
        part = _TxPartition(self.settings, self.dead_letters, step_id, partition, start, pending, prescan, producer)
        part.on_snapshot = self._drop_warm
        with self._lock:  # a rebuild of a partition on the same worker (a zombie's successor) replaces it
            worker = self._by_worker.setdefault(threading.get_ident(), {})
            worker[partition] = part
        part.worker_partitions = worker
        return part
