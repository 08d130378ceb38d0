"""The TransactionalWriter's tail scan and skip set (DESIGN.md §4 step 4, §10).

`scan_own_records` reads one output partition `read_committed` and counts the
`sf-event-id`s of the records THIS writer committed there (header `sf-writer`
= its transactional id; a foreign record carrying a matching id is not ours):

- from `start` (the resume state's `committed_end`), or, without a resume
  state, only records of the last `fresh_window_s` (by record timestamp): a
  fresh state never takes a pre-existing topic's ids from offset 0. The read
  starts at the offset ListOffsets gives for that time (Tansu 0.6.0 answers
  offset 0 for any timestamp, so there the read is longer; what is kept is
  bounded all the same by the timestamp filter);
- to (at least) the high watermark read (read_uncommitted) when the scan
  starts, i.e. until the consumer reports the end of the partition there. A
  read_committed consumer stops at the last stable offset: another producer's
  open transaction hides everything after it, including this writer's later
  commits. The scan waits for the stable offset to pass that high watermark;
  after `timeout_s` without a record it raises `TailScanError` (a clean
  restart) rather than count too little (which would duplicate). A slow read
  that makes progress is not cut off: a restart would only read it again.

`SkipSet` holds the ids to skip while the flow replays, each with the
committed end at which it expires: ids found by a scan that ended at H expire
once the writer's committed end reaches H + `skip-window` offsets. Until the
replay meets them they travel in the snapshot; an id the replay never meets
(a non-deterministic replay) would otherwise travel in every snapshot
forever. The replay does not re-emit the crashed run's records in the same
order (sources interleave differently: two input partitions read at other
speeds), so the window must exceed what the partition receives while the
replay catches up with where the crashed run was; the default (1,000,000
offsets) is far above one restore's replay, and a dropped id is logged.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from dataflows.connectors.kafka.common import (
    EVENT_ID_HEADER,
    WRITER_HEADER,
    header_value,
    take_available,
)

__all__ = ["CommitCheck", "CommitNotVisibleError", "SkipSet", "TailScanError", "WriterRestartError",
           "exactly_once_writer", "scan_own_records", "scan_writers"]

log = logging.getLogger(__name__)


class WriterRestartError(RuntimeError):
    """The exactly-once writer cannot go on safely: the process must exit and restart from the
    last durable snapshot (the supervisor restarts it; the replay is what the writer is built for)."""


class TailScanError(WriterRestartError):
    """The tail scan could not read what it needs within `sink.scan-timeout`."""


def _consumer(brokers: tuple[str, ...] | list[str], isolation: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": ",".join(brokers),
            "group.id": "streamforge-txn-scan",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
            "fetch.wait.max.ms": 10,
            "auto.offset.reset": "earliest",
        }
    )


def _watermarks(brokers: tuple[str, ...] | list[str], tp: TopicPartition, timeout_s: float) -> tuple[int, int]:
    """(low, high) of the partition, read_uncommitted: the high watermark includes open transactions."""
    consumer = _consumer(brokers, "read_uncommitted")
    try:
        low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
        return int(low), int(high)
    finally:
        consumer.close()


def _fresh_start(consumer: Consumer, tp: TopicPartition, low: int, high: int, since_ms: int,
                 timeout_s: float) -> int:
    """The first offset whose timestamp is at or after `since_ms` (ListOffsets by time)."""
    found = consumer.offsets_for_times([TopicPartition(tp.topic, tp.partition, since_ms)], timeout=timeout_s)
    offset = found[0].offset
    return high if offset < 0 else max(low, offset)


def scan_own_records(
    brokers: tuple[str, ...] | list[str],
    topic: str,
    partition: int,
    start: int | None,
    writer_id: str,
    *,
    timeout_s: float,
    fresh_window_s: float,
) -> tuple[Counter[str], int, int]:
    """The ids this writer committed in `topic[partition]` after `start`: (ids, scan start, scan end).

    See the module docstring; `TailScanError` after `timeout_s`.
    """
    found, begin, end = scan_writers(brokers, topic, partition, start, writer_id.__eq__,
                                     timeout_s=timeout_s, fresh_window_s=fresh_window_s)
    return found.get(writer_id, Counter()), begin, end


def scan_writers(
    brokers: tuple[str, ...] | list[str],
    topic: str,
    partition: int,
    start: int | None,
    accept: Callable[[str], bool],
    *,
    timeout_s: float,
    fresh_window_s: float,
    wait_stable: bool = True,
) -> tuple[dict[str, Counter[str]], int, int]:
    """Like `scan_own_records`, for every writer id `accept` accepts: ({writer: ids}, start, end).

    `wait_stable=False`: stop at the first end of partition, even at a last stable offset below
    the high watermark (an open transaction, maybe this writer's own zombie not fenced yet):
    everything below the returned end is decided, a later scan from there reads the rest. Such a
    scan never raises on `timeout_s`: it returns the position it reached (a broker that sends no
    end of partition while a dangling transaction holds the partition, as Tansu 0.6.0 does after
    a kill -9, is then unblocked by the `init_transactions()` that comes before the full scan).
    """
    deadline = time.monotonic() + timeout_s
    tp = TopicPartition(topic, partition)
    low, high = _watermarks(brokers, tp, timeout_s)
    consumer = _consumer(brokers, "read_committed")
    ids: dict[str, Counter[str]] = {}
    since_ms = 0
    try:
        if start is None:
            since_ms = int((time.time() - fresh_window_s) * 1000)
            begin = _fresh_start(consumer, tp, low, high, since_ms, timeout_s)
        else:
            if start < low:
                log.warning("%s[%d]: records %d..%d after the last snapshot were deleted by the broker "
                            "(retention or compaction): the exactly-once scan cannot see them and may "
                            "write some records again", topic, partition, start, low)
            begin = max(start, low)
        if begin >= high:
            return ids, begin, max(begin, high)
        consumer.assign([TopicPartition(topic, partition, begin)])
        position = begin
        while True:
            if time.monotonic() > deadline:
                if not wait_stable:
                    log.warning("%s[%d]: the read_committed scan stopped at offset %d (high watermark %d) "
                                "within %gs; the writer's own scan reads on from there", topic, partition,
                                position, high, timeout_s)
                    return ids, begin, position
                raise TailScanError(_scan_timeout_message(consumer, tp, begin, high, timeout_s))
            for msg in take_available(consumer, 1000, 0.05):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if (msg.offset() or 0) >= high or not wait_stable:
                            return ids, begin, int(msg.offset() or 0)
                        continue  # stopped at the last stable offset: wait for it to move
                    raise KafkaException(err)
                position = int(msg.offset() or 0) + 1
                deadline = time.monotonic() + timeout_s  # `timeout_s` bounds a stall, not a slow read
                # records past `high` were written after the scan began (by others: this writer has
                # not started); counting only ours, reading on to the end reported by EOF is harmless
                writer = header_value(msg.headers(), WRITER_HEADER)
                if writer is None or msg.timestamp()[1] < since_ms:
                    continue
                name = writer.decode("utf-8", "replace")
                eid = header_value(msg.headers(), EVENT_ID_HEADER)
                if eid is not None and accept(name):
                    ids.setdefault(name, Counter())[eid.decode()] += 1
    finally:
        consumer.close()


def _scan_timeout_message(consumer: Consumer, tp: TopicPartition, begin: int, high: int, timeout_s: float) -> str:
    try:
        stable = consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)[1]
    except KafkaException:
        stable = -1
    why = (f"an open transaction of another producer holds the last stable offset at {stable}"
           if 0 <= stable < high else "the read did not reach it")
    return (f"{tp.topic}[{tp.partition}]: the exactly-once tail scan must read offsets {begin}..{high} "
            f"read_committed, but {why} within sink.scan-timeout ({timeout_s:g}s). Counting less would "
            f"write records twice, so the writer stops (restart from the last snapshot). End or abort "
            f"that open transaction (no other producer may write to an exactly-once output topic), or "
            f"raise sink.scan-timeout.")


class CommitNotVisibleError(WriterRestartError):
    """A commit the broker acknowledged is not visible to read_committed consumers."""


class CommitCheck:
    """Reads back, read_committed, the records of each transaction the writer committed.

    A broker acknowledges `EndTxn` once the commit is decided; Kafka then writes the markers that
    make the records visible (`TransactionCoordinator`, `TransactionMarkerChannelManager`), so they
    show up at once or shortly after. A broker that loses state in a crash can acknowledge what it
    does not keep: Tansu 0.6.0 with S3 storage, killed mid-write, updates the watermark, the
    `meta.json` producer and transaction records and the batch object in separate writes
    (tansu-storage/src/dynostore.rs `produce`), and the chaos harness saw it acknowledge records it
    never stored, and commits whose records stay behind a last stable offset that never moves.
    Such records must not count as written in the snapshot: `verify` raises
    `CommitNotVisibleError` before `snapshot()` returns, the process restarts from the last
    durable snapshot, `init_transactions()` rolls a dangling transaction back and the replay
    writes the records again. Cost: reading back what was written (one fetch per megabyte or so).
    """

    def __init__(self, brokers: tuple[str, ...] | list[str], topic: str, partition: int, writer_id: str) -> None:
        self._brokers, self._topic, self._partition = brokers, topic, partition
        self._writer = writer_id.encode()
        self._mine = (WRITER_HEADER, self._writer)  # the header of this writer's records
        self._consumer: Consumer | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the delivery reports of the current attempt (an abort, or after `verify`)."""
        self._first, self._last, self._count = -1, -1, 0

    def delivered(self, offset: int) -> None:
        """A delivery report of the open transaction: the broker stored a record at `offset`."""
        self._count += 1
        if offset >= 0:
            self._first = offset if self._first < 0 else min(self._first, offset)
            self._last = max(self._last, offset)

    def verify(self, timeout_s: float) -> None:
        """Wait (bounded) until every delivered record of the committed transaction is read
        read_committed; raise `CommitNotVisibleError` when one is missing or never shows up."""
        first, last, want = self._first, self._last, self._count
        self.reset()
        if want == 0:
            return
        where = f"{self._topic}[{self._partition}]"
        if first < 0:
            raise CommitNotVisibleError(f"{where}: the broker acknowledged {want} record(s) without offsets")
        if self._consumer is None:
            self._consumer = _consumer(self._brokers, "read_committed")
        self._consumer.assign([TopicPartition(self._topic, self._partition, first)])
        deadline, seen = time.monotonic() + timeout_s, 0
        try:
            while time.monotonic() < deadline:
                for msg in take_available(self._consumer, 1000, 0.05):
                    err, offset = msg.error(), int(msg.offset() or 0)
                    if err is None:
                        deadline = time.monotonic() + timeout_s  # bounds a stall, not a slow read
                    if err is not None and err.code() != KafkaError._PARTITION_EOF:
                        if err.retriable() or err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
                            continue
                        raise CommitNotVisibleError(f"{where}: reading back the commit failed: {err.str()}")
                    if err is None and offset <= last and self._mine in (msg.headers() or ()):
                        seen += 1
                    if (err is None and offset >= last) or (err is not None and offset > last):
                        if seen == want:
                            return
                        raise CommitNotVisibleError(
                            f"{where}: the broker acknowledged the commit of {want} record(s) at offsets "
                            f"{first}..{last}, but a read_committed consumer reads {seen} of them (the others "
                            f"read as aborted, or were never stored): restart from the last snapshot and "
                            f"write them again")
                    # an end of partition at or below `last`: the markers are not written yet; wait
            raise CommitNotVisibleError(
                f"{where}: the commit of offsets {first}..{last} was acknowledged but is not visible "
                f"read_committed within {timeout_s:g}s (the last stable offset does not move past it): "
                f"restart from the last snapshot")
        finally:
            self._consumer.unassign()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class SkipSet:
    """Ids to skip while replaying (counted), each with the committed end at which it expires."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.expires: dict[str, int] = {}
        self.dropped = 0

    def add(self, ids: Counter[str], expires_at: int) -> None:
        for eid, n in ids.items():
            self.counts[eid] += n
            self.expires[eid] = max(self.expires.get(eid, expires_at), expires_at)

    def take(self, event_id: str) -> bool:
        """True (and one fewer to skip) if `event_id` is to be skipped."""
        n = self.counts.get(event_id, 0)
        if n <= 0:
            return False
        if n == 1:
            del self.counts[event_id]
            self.expires.pop(event_id, None)
        else:
            self.counts[event_id] = n - 1
        return True

    def expire(self, committed_end: int) -> int:
        """Drop the ids whose window the committed end has passed; how many were dropped."""
        gone = [eid for eid, at in self.expires.items() if at <= committed_end]
        for eid in gone:
            self.dropped += self.counts.pop(eid, 0)
            del self.expires[eid]
        return len(gone)

    def to_state(self) -> dict[str, list[int]]:
        return {eid: [n, self.expires[eid]] for eid, n in self.counts.items()}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, default_expiry: int) -> SkipSet:
        """From `to_state()`; a plain `{id: count}` (older snapshots) expires at `default_expiry`."""
        skip = cls()
        for eid, value in (state or {}).items():
            n, at = (value, default_expiry) if isinstance(value, int) else (int(value[0]), int(value[1]))
            skip.add(Counter({eid: n}), at)
        return skip


def exactly_once_writer(brokers: tuple[str, ...] | list[str], topic: str, timeout_s: float = 5.0) -> str | None:
    """The `sf-writer` (an exactly-once TransactionalWriter's transactional id) found among the
    last records of any partition of `topic`, or None: whether `topic` is an exactly-once output.

    Reads read_uncommitted (an open transaction's records count too); lists all topics rather
    than asking by name (which auto-creates a topic on brokers that allow it, Tansu does).
    """
    consumer = _consumer(brokers, "read_uncommitted")
    try:
        meta = consumer.list_topics(timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return None
        tps = []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)
            if high > low:
                tps.append(TopicPartition(topic, p, max(low, high - 20)))  # past control records
        if not tps:
            return None
        consumer.assign(tps)
        deadline, done = time.monotonic() + timeout_s, 0
        while done < len(tps) and time.monotonic() < deadline:
            for msg in take_available(consumer, 100, 0.05):
                err = msg.error()
                if err is not None:
                    done += err.code() == KafkaError._PARTITION_EOF
                    continue
                writer = header_value(msg.headers(), WRITER_HEADER)
                if writer is not None:
                    return writer.decode("utf-8", "replace")
        return None
    finally:
        consumer.close()
