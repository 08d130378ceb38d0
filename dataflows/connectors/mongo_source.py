"""MongoDB change-stream source with an automatic SnapshotLoader.

`MongoChangeSource` is a `FixedPartitionedSource`: one partition per watched
namespace (`db.collection`). Each partition emits `Event`s (and `DeadLetter`s
for documents the pipeline cannot carry; split them with
`dataflows.errors.split_dead_letters`):

- change events: `Event(key=encode_key(_id), value=fullDocument or None,
  op=insert|update|replace|delete, event_id="mongo:{ns}:{token _data}",
  event_time_ms=wallTime or clusterTime)`; an update whose document was
  already deleted when looked up (`fullDocument: null`) is emitted as a
  delete (the real delete follows; both converge);
- snapshot events of a re-sync: `Event(op="snapshot", headers=(("sf-generation",
  b"G"),), event_id="snapshot:{ns}:{G}:{key}")`, in `_id` order;
- after the last snapshot event of generation G, one marker
  `Event(key="__generation__", op="generation", value={"generation": G,
  "complete": True, "namespace": ns})` so a Materializer can tombstone keys
  that the re-sync did not see (deleted while the position was lost).

State per partition (`NamespaceState`, returned by `snapshot()`): the resume
token (the post-batch resume token, so an idle collection still advances),
the last completed generation and, during a re-sync, `ScanProgress` (start
token, last `_id` scanned): a crash resumes the scan mid-way.

SnapshotLoader (Debezium `snapshot.mode`):

- `when_needed` (default): re-sync on first start without a token, on error
  286 ChangeStreamHistoryLost, 260 InvalidResumeToken, or an invalidate event;
- `initial`: re-sync on first start only; a lost position fails the flow;
- `never`: first start streams from "now"; a lost position fails the flow.

A re-sync opens a change stream *first* and keeps its start token, scans the
collection in `_id` chunks (throttled to `max_docs_per_second`), then resumes
the stream from the kept token: changes during the scan are replayed, and
idempotent downstream steps converge. (Scans use `_id > last`, so a
collection whose `_id`s mix BSON types is scanned only for the type of its
first `_id`.)

`next_batch` never blocks for long: one getMore with a short
`maxAwaitTimeMS`; network errors close the stream and retry later with
exponential backoff (`next_awake`), from the same token.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import decode
from bson.raw_bson import RawBSONDocument
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from pymongo import MongoClient
from pymongo.change_stream import CollectionChangeStream
from pymongo.errors import PyMongoError
from pymongo.uri_parser import parse_uri

from dataflows import metrics
from dataflows.connectors.mongo_codec import (
    RAW_OPTIONS,
    UnsupportedDocument,
    check_document,
    encode_key,
    token_time_ms,
)
from dataflows.connectors.mongo_errors import is_position_lost, is_transient
from dataflows.dead_letter import DeadLetter, dead_letter
from dataflows.events import Event, RawRecord, mongo_event_id, now_ms, snapshot_event_id
from dataflows.retry import RetryPolicy

__all__ = [
    "GENERATION_KEY",
    "MongoChangeSource",
    "MongoSourceError",
    "MongoSourceSettings",
    "NamespaceState",
    "ScanProgress",
    "SourceItem",
]

log = logging.getLogger(__name__)

GENERATION_KEY = "__generation__"
SNAPSHOT_MODES = ("when_needed", "initial", "never")
SourceItem = Event | DeadLetter
_DATA_OPS = ("insert", "update", "replace", "delete")


class MongoSourceError(RuntimeError):
    """The source cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class MongoSourceSettings:
    """Everything a source partition needs (built from config by `mongo.py`)."""

    uri: str
    database: str
    collections: tuple[str, ...]
    pipeline: str
    snapshot_mode: str = "when_needed"
    chunk_size: int = 1024
    max_docs_per_second: float = 0.0
    batch_size: int = 1000
    max_await_ms: int = 50
    max_document_bytes: int = 0
    require_collection: bool = True
    server_selection_timeout_ms: int = 2000
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    idle_eof_s: float = 0.0  # > 0: end the partition after this long without data (bounded runs)
    initial_token: dict[str, Any] | None = None  # fresh start (no state): resume here instead of re-syncing

    def hosts(self) -> str:
        """The servers of the URI, without credentials (for messages)."""
        try:
            return ",".join(f"{h}:{p}" for h, p in parse_uri(self.uri)["nodelist"])
        except Exception:  # noqa: BLE001
            return "<invalid uri>"


@dataclass
class ScanProgress:
    """A re-sync in progress: generation, kept start token, last `_id` emitted."""

    generation: int
    start_token: dict[str, Any]
    start_time_ms: int
    last_id: Any = None
    has_last: bool = False
    docs: int = 0


@dataclass
class NamespaceState:
    """Snapshot state of one namespace partition."""

    token: dict[str, Any] | None = None
    generation: int = 0
    scan: ScanProgress | None = None
    version: int = 1
    resyncs: list[str] = field(default_factory=list)  # reasons, newest last (max 10)


def _plain(doc: Any) -> Any:
    """A RawBSONDocument as a plain dict (what state keeps and pickles)."""
    return decode(doc.raw) if isinstance(doc, RawBSONDocument) else doc


class _NamespacePartition(StatefulSourcePartition[SourceItem, NamespaceState]):
    def __init__(self, s: MongoSourceSettings, step_id: str, ns: str, state: NamespaceState, fresh: bool) -> None:
        self._s, self._step_id, self._ns, self._state = s, step_id, ns, state
        self._source = f"mongo:{ns}"
        coll_name = ns[len(s.database) + 1 :]
        self._client: MongoClient[Any] = MongoClient(
            s.uri, serverSelectionTimeoutMS=s.server_selection_timeout_ms, appname="streamforge"
        )
        self._coll = self._client[s.database].get_collection(coll_name, codec_options=RAW_OPTIONS)
        self._stream: CollectionChangeStream[Any] | None = None
        self._wake = 0.0
        self._failures = 0
        self._last_data = time.monotonic()
        self._resync_reason: str | None = None
        self._latency = metrics.SOURCE_LATENCY.labels(pipeline=s.pipeline, source=self._source)
        self._reconnect = RetryPolicy(initial_backoff_s=s.initial_backoff_s, max_backoff_s=s.max_backoff_s, jitter=0.5)
        if fresh:
            self._check_start(coll_name)
        elif state.scan is not None:
            log.warning("source %s: resuming re-sync generation %d after %d documents",
                        ns, state.scan.generation, state.scan.docs)

    # -- start checks ---------------------------------------------------------
    def _check_start(self, coll_name: str) -> None:
        try:
            self._client.admin.command("ping")
            names = self._client[self._s.database].list_collection_names(filter={"name": coll_name})
        except PyMongoError as exc:
            self.close()
            raise MongoSourceError(
                f"source {self._ns}: cannot reach MongoDB at {self._s.hosts()}: {exc}"
            ) from exc
        if self._s.require_collection and coll_name not in names:
            self.close()
            raise MongoSourceError(
                f"source {self._ns}: collection {coll_name!r} does not exist in database "
                f"{self._s.database!r} on {self._s.hosts()} (check source.database / "
                "source.collections, or set source.require-collection: false)"
            )

    # -- bytewax API ----------------------------------------------------------
    def next_batch(self) -> list[SourceItem]:
        if time.monotonic() < self._wake:
            return []
        try:
            out = self._step()
            self._failures = 0
        except PyMongoError as exc:
            self._close_stream()
            if is_position_lost(exc):
                details = getattr(exc, "details", None) or {}
                self._position_lost(f"error {getattr(exc, 'code', '?')} {details.get('codeName', '')}".strip())
                return []
            if not is_transient(exc):
                raise MongoSourceError(f"source {self._ns}: MongoDB error: {exc}") from exc
            self._backoff(exc)
            return []
        if out or self._state.scan is not None:
            self._last_data = time.monotonic()
        elif self._s.idle_eof_s > 0 and time.monotonic() - self._last_data > self._s.idle_eof_s:
            raise StopIteration()
        token_ms = token_time_ms(self._state.token)
        if token_ms is not None:
            age = max(0.0, (now_ms() - token_ms) / 1000.0)
            metrics.RESUME_TOKEN_AGE.labels(pipeline=self._s.pipeline, namespace=self._ns).set(age)
        return out

    def next_awake(self) -> datetime | None:
        left = self._wake - time.monotonic()
        return datetime.now(UTC) + timedelta(seconds=left) if left > 0 else None

    def snapshot(self) -> NamespaceState:
        return copy.deepcopy(self._state)

    def close(self) -> None:
        self._close_stream()
        self._client.close()

    # -- state machine ----------------------------------------------------------
    def _step(self) -> list[SourceItem]:
        st = self._state
        if self._resync_reason is not None:
            self._begin_resync(self._resync_reason)
            self._resync_reason = None
            return []
        if st.scan is not None:
            return self._scan_chunk(st.scan)
        if st.token is None:
            if self._s.snapshot_mode == "never":
                st.token = _plain(self._open_stream().resume_token)
                return self._read_stream()
            self._begin_resync("first start without a resume token")
            return []
        return self._read_stream()

    def _open_stream(self) -> CollectionChangeStream[Any]:
        if self._stream is None:
            self._stream = self._coll.watch(
                full_document="updateLookup",
                resume_after=self._state.token,
                max_await_time_ms=self._s.max_await_ms,
                batch_size=self._s.batch_size,
            )
        return self._stream

    def _close_stream(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            except PyMongoError:
                pass
            self._stream = None

    def _read_stream(self) -> list[SourceItem]:
        stream = self._open_stream()
        out: list[SourceItem] = []
        while len(out) < self._s.batch_size:
            change = stream.try_next()
            if change is None:
                break
            op = change["operationType"]
            if op == "invalidate":
                self._close_stream()
                self._position_lost("invalidate event (collection dropped or renamed)")
                return out
            if op in _DATA_OPS:
                out.append(self._change_item(change))
            if not stream._cursor._has_next():  # batch used up: don't wait for another getMore
                break
        token = stream.resume_token  # the last event's or the post-batch token (a copy: read once)
        self._state.token = token if token is None else _plain(token)
        return out

    def _change_item(self, change: Any) -> SourceItem:
        data = change["_id"]["_data"]
        key = encode_key(change["documentKey"]["_id"])
        event_id = mongo_event_id(self._ns, data)
        wall = change.get("wallTime")
        time_ms = int(wall.timestamp() * 1000) if wall is not None else change["clusterTime"].time * 1000
        op = change["operationType"]
        full = change.get("fullDocument")
        try:
            value = None if full is None else check_document(full, self._s.max_document_bytes)
        except UnsupportedDocument as exc:
            coords = {"namespace": self._ns, "resume_token": data, "key": key, "op": op}
            return self._dead(exc, full.raw, event_id, key, coords)
        if op == "update" and value is None:
            op = "delete"
        self._latency.observe(max(0, now_ms() - time_ms))
        return Event(key=key, value=value, event_time_ms=time_ms, event_id=event_id, source=self._source, op=op)

    # -- SnapshotLoader -----------------------------------------------------------
    def _position_lost(self, reason: str) -> None:
        if self._s.snapshot_mode != "when_needed":
            raise MongoSourceError(
                f"source {self._ns}: the change stream position is lost ({reason}) and "
                f"snapshot-mode is {self._s.snapshot_mode!r}, which never re-syncs after start; "
                "events may have been missed. Set source.snapshot-mode: when_needed to re-sync "
                "automatically, or reset this pipeline's state to start over."
            )
        self._resync_reason = reason  # begun by the next _step, where network errors are handled

    def _begin_resync(self, reason: str) -> None:
        st = self._state
        stream = self._coll.watch(full_document="updateLookup", max_await_time_ms=self._s.max_await_ms)
        try:
            token = _plain(stream.resume_token)
        finally:
            stream.close()
        if token is None:
            raise MongoSourceError(f"source {self._ns}: server returned no postBatchResumeToken")
        gen = st.generation + 1
        # The generation's start time (marker event time, for the Materializer's sweep rule):
        # never earlier than the start position; later only sweeps rows the replay restores.
        st.scan = ScanProgress(gen, token, max(token_time_ms(token) or 0, now_ms()))
        st.resyncs = (st.resyncs + [f"generation {gen}: {reason}"])[-10:]
        log.warning("source %s: re-sync as generation %d (%s)", self._ns, gen, reason)

    def _scan_chunk(self, sc: ScanProgress) -> list[SourceItem]:
        rate = self._s.max_docs_per_second
        n = self._s.chunk_size if rate <= 0 else max(1, min(self._s.chunk_size, int(rate)))
        flt = {"_id": {"$gt": sc.last_id}} if sc.has_last else {}
        docs = list(self._coll.find(flt, sort=[("_id", 1)], limit=n, batch_size=n))
        out = [self._snapshot_item(raw, sc) for raw in docs]
        if docs:
            sc.last_id, sc.has_last = docs[-1]["_id"], True
            sc.docs += len(docs)
        if rate > 0:
            self._wake = time.monotonic() + len(docs) / rate
        if len(docs) < n:
            out.append(Event(
                key=GENERATION_KEY,
                value={"generation": sc.generation, "complete": True, "namespace": self._ns},
                event_time_ms=sc.start_time_ms,
                event_id=snapshot_event_id(self._ns, sc.generation, GENERATION_KEY),
                source=self._source,
                op="generation",
                headers=(("sf-generation", str(sc.generation).encode()),),
            ))
            st = self._state
            st.token, st.generation, st.scan = sc.start_token, sc.generation, None
            log.info("source %s: re-sync generation %d complete (%d documents)", self._ns, sc.generation, sc.docs)
        return out

    def _snapshot_item(self, raw: Any, sc: ScanProgress) -> SourceItem:
        key = encode_key(raw["_id"])
        event_id = snapshot_event_id(self._ns, sc.generation, key)
        try:
            value = check_document(raw, self._s.max_document_bytes)
        except UnsupportedDocument as exc:
            coords = {"namespace": self._ns, "generation": sc.generation, "key": key, "op": "snapshot"}
            return self._dead(exc, raw.raw, event_id, key, coords)
        return Event(
            key=key, value=value, event_time_ms=sc.start_time_ms, event_id=event_id,
            source=self._source, op="snapshot", headers=(("sf-generation", str(sc.generation).encode()),),
        )

    # -- failures -----------------------------------------------------------------
    def _dead(self, exc: UnsupportedDocument, payload: bytes, event_id: str, key: str,
              coords: dict[str, Any]) -> DeadLetter:
        rec = RawRecord(payload=bytes(payload), event_id=event_id, source=self._source, key=key.encode(), coords=coords)
        metrics.DLQ_EVENTS.labels(pipeline=self._s.pipeline, stage=self._step_id, error_code=exc.error_code).inc()
        return dead_letter(rec, code=exc.error_code, stage=self._step_id, pipeline=self._s.pipeline, exc=exc)

    def _backoff(self, exc: BaseException) -> None:
        self._failures += 1
        delay = self._reconnect.backoff(min(self._failures - 1, 30))
        self._wake = time.monotonic() + delay
        log.warning("source %s: %s; reconnecting in %.2fs (attempt %d)", self._ns, exc, delay, self._failures)


class MongoChangeSource(FixedPartitionedSource[SourceItem, NamespaceState]):
    """Change streams of `settings.collections`, one partition per namespace."""

    def __init__(self, settings: MongoSourceSettings) -> None:
        if settings.snapshot_mode not in SNAPSHOT_MODES:
            raise ValueError(f"snapshot_mode must be one of {SNAPSHOT_MODES}, got {settings.snapshot_mode!r}")
        self.settings = settings

    def list_parts(self) -> list[str]:
        return [f"{self.settings.database}.{c}" for c in self.settings.collections]

    def build_part(self, step_id: str, for_part: str, resume_state: NamespaceState | None) -> _NamespacePartition:
        state = resume_state if resume_state is not None else NamespaceState(token=self.settings.initial_token)
        return _NamespacePartition(self.settings, step_id, for_part, state, fresh=resume_state is None)
