"""Idempotent MongoDB sink: bulk upserts and deletes, retries, dead letters.

`MongoWriter.write(items)` takes table changes (anything with `kind`
'upsert' | 'tombstone', `key`, `value`, `event_id`, `event_time_ms`, like the
Materializer's `TableChange`) or CDC `Event`s (op 'delete' = tombstone), and
returns the `DeadLetter`s (code SINK_WRITE) of the ones it could not write:

1. the batch is collapsed to the last change per key (the final state is what
   counts, and it makes an unordered bulk safe);
2. upserts are `replace_one({_id}, doc, upsert=True)`, tombstones
   `delete_one({_id})`, in one unordered `bulk_write`;
3. transient failures (network, elections, `RetryableWriteError`...) are
   retried with the `RetryPolicy`'s backoff; after the last attempt, or at once
   for a permanent error (document too large, invalid document, validation),
   the change becomes a dead letter. A whole-batch permanent error is split into
   single writes so only the bad change is dead-lettered.

Version guard (`version_field`): an upsert whose document carries version v
is `replace_one({_id, $or: [{f: {$lt: v}}, {f: {$exists: false}}]}, doc,
upsert=True)`. If a document with the same `_id` and version >= v exists, the
filter does not match and the upsert's insert fails with E11000 on `_id`;
the writer then reads the stored version: >= v means a newer version is
already there (the replayed write is skipped, not an error); a missing
document (deleted meanwhile) is retried; an incomparable version (other
type) is a dead letter. Tombstones delete unconditionally (MongoDB keeps no
tombstones to compare with).

Mirror mode (`mirror_of=(uri, database, collection)`): on a generation
marker (`Event(op="generation")`, end of a source re-sync) the writer also
deletes target documents absent from the mirrored source (`reconcile`),
but only for a *complete* marker (`complete` is True) while the source
collection exists and, when the marker names it, still has the scanned
collection's UUID: a scan that cannot prove it saw every document never
sweeps (a renamed, dropped or replaced source must not empty the target).

Wiring: `write_to_mongo` (operator: dead letters flow on to the pipeline's
DLQ sink) or `MongoSink` (a Bytewax `DynamicSink`; its dead letters go to
`on_dead_letters`, the pipeline's DLQ: `dataflows.connectors.dlq.sink_dead_letters`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from pymongo import DeleteOne, MongoClient, ReplaceOne
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from dataflows import metrics
from dataflows.connectors.mongo.codec import decode_key, encode_key
from dataflows.connectors.mongo.errors import is_transient
from dataflows.dead_letter import DeadLetter, ErrorCode, counted_dead_letter
from dataflows.events import Event, now_ms
from dataflows.flow.threads import pin_thread_state
from dataflows.retry import RetryPolicy

__all__ = [
    "MongoSink",
    "MongoSinkSettings",
    "MongoWriter",
    "WriteStats",
    "write_to_mongo",
]

log = logging.getLogger(__name__)

DEFAULT_SINK_RETRY = RetryPolicy(max_attempts=5, initial_backoff_s=0.05, max_backoff_s=2.0)


@dataclass(frozen=True)
class MongoSinkSettings:
    uri: str
    database: str
    collection: str
    pipeline: str
    version_field: str | None = None
    retry: RetryPolicy = field(default_factory=lambda: DEFAULT_SINK_RETRY)
    server_selection_timeout_ms: int = 5000
    stage: str = "mongo-sink"
    mirror_of: tuple[str, str, str] | None = None  # (uri, database, collection) this target mirrors


@dataclass
class WriteStats:
    """Counters of one writer (for tests, benchmarks and logs)."""

    upserts: int = 0
    deletes: int = 0
    stale_skipped: int = 0
    retries: int = 0
    dead: int = 0


@dataclass
class _Write:
    item: Any
    request: ReplaceOne | DeleteOne
    doc_id: Any
    version: Any = None
    guarded: bool = False


def _as_event(item: Any, source: str) -> Event:
    if isinstance(item, Event):
        return item
    return Event(key=item.key, value=item.value, event_time_ms=item.event_time_ms,
                 event_id=item.event_id, source=source, op=getattr(item, "kind", None))


def _is_marker(item: Any) -> bool:
    """A re-sync generation marker, or any table change that is not a row write."""
    if isinstance(item, Event):
        return item.op == "generation"
    return getattr(item, "kind", None) not in ("upsert", "tombstone")


def _is_tombstone(item: Any) -> bool:
    if isinstance(item, Event):
        return item.op == "delete" or item.value is None
    return getattr(item, "kind", None) == "tombstone"


def _proves_complete(marker: Any) -> bool:
    """True for a generation marker of a re-sync that saw every document (`complete` is exactly True)."""
    value = getattr(marker, "value", None)
    return isinstance(marker, Event) and isinstance(value, dict) and value.get("complete") is True


def _marker_uuid(markers: list[Any]) -> str | None:
    """The collection UUID (hex) the newest complete marker names, if any."""
    for m in reversed(markers):
        if _proves_complete(m) and m.value.get("uuid"):
            return str(m.value["uuid"])
    return None


def _source_is(db: Any, coll: str, uuid_hex: str | None) -> bool:
    """The collection exists (and has UUID `uuid_hex`, when given)."""
    for info in db.list_collections(filter={"name": coll}):
        uid = (info.get("info") or {}).get("uuid")
        return uuid_hex is None or uid is None or bytes(uid).hex() == uuid_hex
    return False


class MongoWriter:
    """Writes table changes to one collection; see the module docstring."""

    def __init__(self, settings: MongoSinkSettings, client: MongoClient[Any] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.s = settings
        self._own_client = client is None
        self._client: MongoClient[Any] = client or MongoClient(
            settings.uri, serverSelectionTimeoutMS=settings.server_selection_timeout_ms, appname="streamforge"
        )
        self._coll = self._client[settings.database][settings.collection]
        self._sleep = sleep
        self._source = f"mongo-sink:{settings.database}.{settings.collection}"
        self.stats = WriteStats()

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def _prepare(self, item: Any) -> _Write:
        doc_id = decode_key(item.key)
        if _is_tombstone(item):
            return _Write(item, DeleteOne({"_id": doc_id}), doc_id)
        doc = dict(item.value)
        doc["_id"] = doc_id
        vf = self.s.version_field
        version = doc.get(vf) if vf else None
        if vf and version is not None:
            flt = {"_id": doc_id, "$or": [{vf: {"$lt": version}}, {vf: {"$exists": False}}]}
            return _Write(item, ReplaceOne(flt, doc, upsert=True), doc_id, version, True)
        return _Write(item, ReplaceOne({"_id": doc_id}, doc, upsert=True), doc_id)

    def write(self, items: Iterable[Any]) -> list[DeadLetter]:
        """Write `items`; returns the dead letters of those that could not be written.

        A generation marker (`Event(op="generation")`) makes a mirror writer
        `reconcile` after the batch's writes; other writers ignore it.
        """
        last: dict[str, Any] = {}
        markers: list[Any] = []
        for item in items:
            if _is_marker(item):
                markers.append(item)
                continue
            last.pop(item.key, None)
            last[item.key] = item
        dead = self._write(last.values())
        if self.s.mirror_of is not None and any(_proves_complete(m) for m in markers):
            self.s.retry.call(lambda: self.reconcile(_marker_uuid(markers)), is_transient)
        return dead

    def reconcile(self, uuid_hex: str | None = None) -> int:
        """Delete target documents whose `_id` is not in the mirrored source collection.

        Nothing is deleted (and 0 returned) when the source collection does not
        exist, or when `uuid_hex` is given and the source's UUID differs (the
        re-synced collection was renamed away or replaced meanwhile).

        Run when a re-sync completes. The Materializer's sweep tombstones keys
        it has in state; this also removes documents that were written by a run
        whose state was lost (killed before its first snapshot) and deleted from
        the source before the re-sync read them. Safe at any time for a mirror:
        anything the source gains later comes through the change stream.
        """
        assert self.s.mirror_of is not None
        uri, db, coll = self.s.mirror_of
        client: MongoClient[Any] = MongoClient(uri, serverSelectionTimeoutMS=self.s.server_selection_timeout_ms)
        try:
            if not _source_is(client[db], coll, uuid_hex):
                log.warning("mongo sink: %s.%s is absent or not the re-synced collection; reconcile skipped", db, coll)
                return 0
            source = client[db][coll]
            removed = 0
            ids: list[Any] = []
            for doc in self._coll.find({}, {"_id": 1}):
                ids.append(doc["_id"])
                if len(ids) == 1000:
                    removed += self._delete_missing(source, ids)
                    ids = []
            removed += self._delete_missing(source, ids) if ids else 0
        finally:
            client.close()
        if removed:
            log.warning("mongo sink: reconcile removed %d documents absent from %s.%s", removed, db, coll)
        return removed

    def _delete_missing(self, source: Any, ids: list[Any]) -> int:
        present = {encode_key(d["_id"]) for d in source.find({"_id": {"$in": ids}}, {"_id": 1})}
        missing = [i for i in ids if encode_key(i) not in present]
        if not missing:
            return 0
        return int(self._coll.delete_many({"_id": {"$in": missing}}).deleted_count)

    def _write(self, changes: Iterable[Any]) -> list[DeadLetter]:
        dead: list[DeadLetter] = []
        pending: list[_Write] = []
        for item in changes:
            try:
                pending.append(self._prepare(item))
            except Exception as exc:  # noqa: BLE001 - e.g. a value that is not a document
                dead.append(self._dead(item, exc, 1, now_ms()))
        first_ms, attempt = now_ms(), 1
        delays = iter(self.s.retry.delays())
        while pending:
            retry, failed = self._attempt(pending)
            dead.extend(self._dead(w.item, exc, attempt, first_ms) for w, exc in failed)
            if not retry:
                break
            delay = next(delays, None)
            if delay is None:
                dead.extend(self._dead(w.item, exc, attempt, first_ms) for w, exc in retry)
                break
            self.stats.retries += len(retry)
            metrics.SINK_RETRIES.labels(pipeline=self.s.pipeline, step=self.s.stage).inc(len(retry))
            log.warning("mongo sink: %d writes failed transiently (%s); retry %d in %.2fs",
                        len(retry), retry[0][1], attempt, delay)
            self._sleep(delay)
            attempt += 1
            pending = [w for w, _ in retry]
        return dead

    def _attempt(self, pending: list[_Write]) -> tuple[list[tuple[_Write, Exception]], list[tuple[_Write, Exception]]]:
        """One bulk write: returns (transient failures, permanent failures)."""
        try:
            self._coll.bulk_write([w.request for w in pending], ordered=False)
        except BulkWriteError as exc:
            return self._sort_errors(pending, exc)
        except Exception as exc:  # noqa: BLE001 - classified: transient, or isolate the bad write
            if is_transient(exc):
                return [(w, exc) for w in pending], []
            if len(pending) == 1:
                return [], [(pending[0], exc)]
            retry: list[tuple[_Write, Exception]] = []
            failed: list[tuple[_Write, Exception]] = []
            for w in pending:  # isolate the bad write(s)
                r, f = self._attempt([w])
                retry += r
                failed += f
            return retry, failed
        for w in pending:
            if isinstance(w.request, DeleteOne):
                self.stats.deletes += 1
            else:
                self.stats.upserts += 1
        return [], []

    def _sort_errors(self, pending: list[_Write], exc: BulkWriteError
                     ) -> tuple[list[tuple[_Write, Exception]], list[tuple[_Write, Exception]]]:
        retry: list[tuple[_Write, Exception]] = []
        failed: list[tuple[_Write, Exception]] = []
        errors = {e["index"]: e for e in exc.details.get("writeErrors", [])}
        wc_failed = bool(exc.details.get("writeConcernErrors"))
        for i, w in enumerate(pending):
            err = errors.get(i)
            if err is None:
                if wc_failed:
                    retry.append((w, exc))
                continue
            one = OperationFailure(err.get("errmsg", ""), err.get("code"), err)
            if w.guarded and err.get("code") == 11000 and dict(err.get("keyPattern") or {}) == {"_id": 1}:
                verdict = self._stale(w)
                if verdict == "stale":
                    self.stats.stale_skipped += 1
                elif verdict == "retry":
                    retry.append((w, one))
                else:
                    failed.append((w, OperationFailure(verdict, 11000, err)))
            elif is_transient(one):
                retry.append((w, one))
            else:
                failed.append((w, one))
        return retry, failed

    def _stale(self, w: _Write) -> str:
        """After E11000 on a guarded upsert: 'stale', 'retry' or a conflict message."""
        vf = self.s.version_field
        assert vf is not None
        try:
            current = self._coll.find_one({"_id": w.doc_id}, {vf: 1})
        except PyMongoError:
            return "retry"
        if current is None or vf not in current:
            return "retry"
        try:
            newer = current[vf] >= w.version
        except TypeError:
            return f"stored {vf}={current[vf]!r} cannot be compared with incoming {vf}={w.version!r}"
        return "stale" if newer else "retry"

    def _dead(self, item: Any, exc: BaseException, attempts: int, first_ms: int) -> DeadLetter:
        self.stats.dead += 1
        return counted_dead_letter(_as_event(item, self._source), code=ErrorCode.SINK_WRITE, stage=self.s.stage,
                           pipeline=self.s.pipeline, exc=exc, attempts=attempts, first_failure_ms=first_ms)


@operator
def write_to_mongo(step_id: str, up: Stream[Any], settings: MongoSinkSettings) -> Stream[DeadLetter]:
    """Write `up` (table changes / CDC events) to MongoDB; emits the dead letters.

    Like `MongoSink`, but failed writes flow on as a stream, so they reach the
    pipeline's own DLQ sink (file or Kafka). One `MongoWriter` per process,
    created on first use; writes happen as each batch passes (at-least-once,
    and idempotent: a replayed batch converges to the same documents).
    """
    holder: list[MongoWriter] = []
    lock = threading.Lock()

    def write(batch: list[Any]) -> list[DeadLetter]:
        with lock:
            if not holder:
                holder.append(MongoWriter(settings))
            return holder[0].write(batch)

    return op.flat_map_batch("write", up, write)


class _MongoSinkPartition(StatelessSinkPartition[Any]):
    def __init__(self, writer: MongoWriter, on_dead_letters: Callable[[list[DeadLetter]], None]) -> None:
        self._writer, self._on_dead = writer, on_dead_letters

    def write_batch(self, items: list[Any]) -> None:
        dead = self._writer.write(items)
        if dead:
            self._on_dead(dead)

    def close(self) -> None:
        self._writer.close()


class MongoSink(DynamicSink[Any]):
    """Bytewax sink around `MongoWriter`; dead letters go to `on_dead_letters`."""

    def __init__(self, settings: MongoSinkSettings, on_dead_letters: Callable[[list[DeadLetter]], None]) -> None:
        self.settings, self.on_dead_letters = settings, on_dead_letters

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MongoSinkPartition:
        pin_thread_state()
        # dead letters and retries are labelled with the step Bytewax built this sink for
        return _MongoSinkPartition(MongoWriter(replace(self.settings, stage=step_id)), self.on_dead_letters)
