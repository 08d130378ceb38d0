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
  b"G"),), event_id="snapshot:{ns}:{G}:{key}")`, in `_id` index order;
- after the last snapshot event of generation G, one marker
  `Event(key="__generation__", op="generation", value={"generation": G,
  "complete": True, "namespace": ns, "uuid": collection UUID hex})` so a
  Materializer can tombstone keys that the re-sync did not see. It is only
  emitted when the scan *proved* it saw every document: it walked the whole
  `_id` index (all BSON types) of the collection whose UUID it started with.

State per partition (`NamespaceState`, returned by `snapshot()`): the resume
token (or, for a fresh stream whose first batch carried events, the start
operation time), the collection UUID and replica-set name the token belongs
to, the last completed generation, during a re-sync `ScanProgress`, and
`halted` (why the source stopped, if it did).

SnapshotLoader (Debezium `snapshot.mode`):

- `when_needed` (default): re-sync on first start without a token, when the
  saved position is lost (286, 280, 136, 260) or rejected (any other refusal of
  the token while a stream without it opens: 9 FailedToParse, 40649, ...), and
  when the saved position belongs to another collection / cluster or lies
  ahead of the source's cluster time (a restored or re-pointed source);
- `initial`: re-sync on first start only; a lost position fails the flow;
- `never`: first start streams from "now"; a lost position fails the flow.

A re-sync opens a change stream *first* and keeps its start token, scans the
collection through the `_id` index (`hint` + `min` bounds, which unlike
`$gt` are not bracketed by BSON type) with majority read concern and
`afterClusterTime` at its start (so a lagging secondary cannot hide writes),
throttled to `max_docs_per_second`, then resumes the stream from the kept
token: changes during the scan are replayed; idempotent steps converge.
A re-sync whose start position leaves the oplog before the stream resumes
(checked every `oplog_probe_interval_s` during the scan, and when it ends)
is retried once; the second time the source stops (`halted`, metric
`streamforge_mongo_resync_exceeds_oplog_window`): it could never finish.

Renames and drops (`namespace_gone`, config `source.namespace-gone`): a
`rename`, `drop` or `dropDatabase` of the watched collection (and a rename
onto it) invalidates the stream. `stop` (default) stops the partition with a
clear message and `streamforge_mongo_namespace_gone` = 1 and never re-syncs
an absent namespace (which would sweep the target empty); `follow` waits
until a collection exists under the name again (the usual swap: rename away,
rename a new one into place) and re-syncs it.

Large events: updates leave out `updateDescription` (only `fullDocument` is
used; `drop_update_description`), `split_large_events` adds
`$changeStreamSplitLargeEvent` (MongoDB 6.0.9+) and reassembles fragments;
an event that still exceeds 16 MiB (BSONObjectTooLarge) fails with a clear
message (`oversize_handling="fail"`) or becomes an OVERSIZED dead letter with
its document key and token (`"skip"`, like Debezium's
`cursor.oversize.handling.mode`).

`next_batch` never blocks for long: it reads until a getMore (at most
`maxAwaitTimeMS`) comes back empty; network errors close the stream and
retry later with exponential backoff (`next_awake`), from the same token.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import Timestamp, decode
from bson.raw_bson import RawBSONDocument
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from pymongo import MongoClient
from pymongo.change_stream import CollectionChangeStream
from pymongo.errors import OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.uri_parser import parse_uri

from dataflows import metrics
from dataflows.connectors.mongo.codec import (
    RAW_OPTIONS,
    UnsupportedDocument,
    check_document,
    encode_key,
    token_time_ms,
)
from dataflows.connectors.mongo.errors import (
    NOT_A_REPLICA_SET,
    error_name,
    is_position_lost,
    is_too_large,
    is_transient,
)
from dataflows.dead_letter import DeadLetter, ErrorCode, counted_dead_letter
from dataflows.events import Event, RawRecord, mongo_event_id, now_ms, snapshot_event_id
from dataflows.flow.pacing import EpochPacer
from dataflows.flow.threads import pin_thread_state
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
NAMESPACE_GONE_MODES = ("stop", "follow")
OVERSIZE_MODES = ("fail", "skip")
SourceItem = Event | DeadLetter
_DATA_OPS = ("insert", "update", "replace", "delete")
_GONE_OPS = ("drop", "rename", "dropDatabase")
_LOST_RESYNCS_TO_HALT = 2
_HALT_LOG_INTERVAL_S = 60.0
_MAJORITY = ReadConcern("majority")


class MongoSourceError(RuntimeError):
    """The source cannot go on; the message says why and what to do."""


class _Lost(Exception):
    """The saved position cannot be used (rejected token, other cluster, ...); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MongoSourceSettings:
    """Everything a source partition needs (built from config by `from_config.py`)."""

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
    namespace_gone: str = "stop"  # stop | follow (see the module docstring)
    split_large_events: bool = False  # $changeStreamSplitLargeEvent (MongoDB 6.0.9+)
    drop_update_description: bool = True  # only fullDocument is used: keep events small
    oversize_handling: str = "fail"  # fail | skip (events over 16 MiB)
    oplog_probe_interval_s: float = 30.0  # during a re-sync: check this often that its start is still in the oplog

    def hosts(self) -> str:
        """The servers of the URI, without credentials (for messages)."""
        try:
            return ",".join(f"{h}:{p}" for h, p in parse_uri(self.uri)["nodelist"])
        except Exception:  # noqa: BLE001
            return "<invalid uri>"


@dataclass
class ScanProgress:
    """A re-sync in progress: generation, kept start position, last `_id` emitted.

    `start_token` is the stream's start token, or None when the first batch carried
    events; then `start_at` (the aggregate's operationTime) is the start position.
    `read_after` is the `afterClusterTime` of the scan's reads; `uuid` the collection's.
    """

    generation: int
    start_token: dict[str, Any] | None
    start_time_ms: int
    last_id: Any = None
    has_last: bool = False
    docs: int = 0
    start_at: Timestamp | None = None
    read_after: Timestamp | None = None
    uuid: bytes | None = None


@dataclass
class NamespaceState:
    """Snapshot state of one namespace partition (new fields default for states pickled by older code)."""

    token: dict[str, Any] | None = None
    generation: int = 0
    scan: ScanProgress | None = None
    version: int = 1
    resyncs: list[str] = field(default_factory=list)  # reasons, newest last (max 10)
    start_at: Timestamp | None = None  # resume at this operation time when there is no token yet
    uuid: bytes | None = None  # collection UUID the position belongs to
    cluster: str | None = None  # replica-set name the position belongs to
    lost_resyncs: int = 0  # consecutive re-syncs whose start position left the oplog
    unconfirmed: bool = False  # a re-sync completed; its start position has not been resumed yet
    halted: str | None = None  # why the source stopped (namespace gone, oplog window)
    halt_kind: str | None = None  # "namespace" | "oplog"
    last_started: int = 0  # newest generation begun (an abandoned one is never reused)


def _plain(doc: Any) -> Any:
    """A RawBSONDocument as a plain dict (what state keeps and pickles)."""
    return decode(doc.raw) if isinstance(doc, RawBSONDocument) else doc


class _NamespacePartition(StatefulSourcePartition[SourceItem, NamespaceState]):
    def __init__(self, s: MongoSourceSettings, step_id: str, ns: str, state: NamespaceState, fresh: bool) -> None:
        self._s, self._step_id, self._ns, self._state = s, step_id, ns, state
        self._source = f"mongo:{ns}"
        self._coll_name = ns[len(s.database) + 1 :]
        self._client: MongoClient[Any] = MongoClient(
            s.uri, serverSelectionTimeoutMS=s.server_selection_timeout_ms, appname="streamforge"
        )
        self._coll = self._client[s.database].get_collection(self._coll_name, codec_options=RAW_OPTIONS)
        self._stream: CollectionChangeStream[Any] | None = None
        self._wake = 0.0
        self._failures = 0
        self._last_data = time.monotonic()
        self._resync_reason: str | None = None
        self._pacer = EpochPacer()  # no spinning through the epoch-boundary wait
        self._verified = fresh  # a restored position is checked against the server once
        self._fragments: dict[str, Any] | None = None  # a split event being reassembled
        self._one_by_one = False  # oversize skip: read single events up to the one too large
        self._halt_logged = 0.0
        self._next_probe = 0.0
        labels = {"pipeline": s.pipeline, "namespace": ns}
        self._latency = metrics.SOURCE_LATENCY.labels(pipeline=s.pipeline, source=self._source)
        self._gone_metric = metrics.MONGO_NAMESPACE_GONE.labels(**labels)
        self._window_metric = metrics.MONGO_RESYNC_EXCEEDS_OPLOG_WINDOW.labels(**labels)
        self._reconnect = RetryPolicy(initial_backoff_s=s.initial_backoff_s, max_backoff_s=s.max_backoff_s, jitter=0.5)
        if state.halt_kind == "oplog":  # a restart retries once more (the operator may have resized the oplog)
            state.halted, state.halt_kind, state.lost_resyncs = None, None, _LOST_RESYNCS_TO_HALT - 1
        self._gone_metric.set(1 if state.halt_kind == "namespace" else 0)
        self._window_metric.set(0)
        if fresh:
            self._check_start()
        elif state.scan is not None:
            log.warning("source %s: resuming re-sync generation %d after %d documents",
                        ns, state.scan.generation, state.scan.docs)

    # -- start checks ---------------------------------------------------------
    def _check_start(self) -> None:
        try:
            hello = self._client.admin.command("hello")
            names = self._client[self._s.database].list_collection_names(filter={"name": self._coll_name})
        except PyMongoError as exc:
            self.close()
            raise MongoSourceError(
                f"source {self._ns}: cannot reach MongoDB at {self._s.hosts()}: {exc}"
            ) from exc
        if "setName" not in hello and hello.get("msg") != "isdbgrid":
            self.close()
            raise self._standalone_error()
        if self._s.require_collection and self._coll_name not in names:
            self.close()
            raise MongoSourceError(
                f"source {self._ns}: collection {self._coll_name!r} does not exist in database "
                f"{self._s.database!r} on {self._s.hosts()} (check source.database / "
                "source.collections, or set source.require-collection: false)"
            )

    def _standalone_error(self) -> MongoSourceError:
        return MongoSourceError(
            f"source {self._ns}: {self._s.hosts()} is a standalone MongoDB server; change streams need a "
            f"replica set or a sharded cluster (the server answers {NOT_A_REPLICA_SET} to $changeStream). "
            "Run it as a (single-node) replica set: start mongod with --replSet rs0 and run rs.initiate()."
        )

    def _identity(self) -> tuple[str | None, bytes | None, Timestamp | None]:
        """(replica-set name, collection UUID or None if absent, the server's cluster time)."""
        hello = self._client.admin.command("hello")
        ping = self._client.admin.command("ping")
        return hello.get("setName"), self._collection_uuid(), ping.get("operationTime")

    def _collection_uuid(self) -> bytes | None:
        """The watched collection's UUID (listCollections `info.uuid`), None if it does not exist."""
        for info in self._client[self._s.database].list_collections(filter={"name": self._coll_name}):
            uid = (info.get("info") or {}).get("uuid")
            return bytes(uid) if uid is not None else b""
        return None

    def _verify_position(self) -> None:
        """A restored position must belong to this collection on this cluster, and not lie ahead of it.

        An idle (high-water-mark) token from another cluster or from before a restore
        is accepted by a real server and would resume silently (DESIGN.md §10).
        """
        st = self._state
        cluster, uid, cluster_time = self._identity()
        self._verified = True
        if st.token is None or uid is None:
            return  # nothing to verify / the stream reports the rename or drop itself
        if st.uuid is None:  # a state written before identities were kept: adopt what is there now
            st.uuid, st.cluster = uid, cluster
        if st.cluster is not None and cluster is not None and cluster != st.cluster:
            raise _Lost(f"the saved position belongs to another replica set ({st.cluster!r}, now {cluster!r})")
        if st.uuid is not None and uid != st.uuid:
            raise _Lost("the saved position belongs to another collection (another cluster, a restore, "
                        "or the collection was re-created): its UUID changed")
        token_ms = token_time_ms(st.token)
        if token_ms is not None and isinstance(cluster_time, Timestamp) and token_ms > cluster_time.time * 1000:
            raise _Lost(f"the saved position ({token_ms // 1000}) is ahead of the source's cluster time "
                        f"({cluster_time.time}): the source was restored or re-pointed")

    # -- bytewax API ----------------------------------------------------------
    def next_batch(self) -> list[SourceItem]:
        self._pacer.polled()
        if time.monotonic() < self._wake:
            return []
        if self._state.halted is not None and not self._unhalt():
            self._log_halted()
            return self._idle([])
        try:
            out = self._step()
            self._failures = 0
        except _Lost as lost:
            self._close_stream()
            self._position_lost(lost.reason)
            return []
        except PyMongoError as exc:
            self._close_stream()
            if is_position_lost(exc):
                self._position_lost(error_name(exc))
                return []
            if is_too_large(exc):
                return self._too_large(exc)
            if not is_transient(exc):
                if isinstance(exc, OperationFailure) and exc.code == NOT_A_REPLICA_SET:
                    raise self._standalone_error() from exc
                raise MongoSourceError(f"source {self._ns}: MongoDB error: {exc}") from exc
            self._backoff(exc)
            return []
        return self._idle(out)

    def _idle(self, out: list[SourceItem]) -> list[SourceItem]:
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
        return self._pacer.next_awake(datetime.now(UTC) + timedelta(seconds=left) if left > 0 else None)

    def snapshot(self) -> NamespaceState:
        self._pacer.advanced()
        return copy.deepcopy(self._state)

    def close(self) -> None:
        self._close_stream()
        self._client.close()

    # -- state machine ----------------------------------------------------------
    def _step(self) -> list[SourceItem]:
        st = self._state
        if self._resync_reason is not None:
            if self._begin_resync(self._resync_reason):
                self._resync_reason = None
            return []
        if st.scan is not None:
            return self._scan_chunk(st.scan)
        if st.token is None and st.start_at is None:
            if self._s.snapshot_mode == "never":
                return self._read_stream()  # opens at "now"; keeps its post-batch token
            self._resync_reason = "first start without a resume token"
            return []
        if not self._verified:
            self._verify_position()
        return self._read_stream()

    def _stages(self) -> list[dict[str, Any]]:
        stages: list[dict[str, Any]] = []
        if self._s.drop_update_description:
            stages.append({"$project": {"updateDescription": 0}})
        if self._s.split_large_events:
            stages.append({"$changeStreamSplitLargeEvent": {}})  # must be the last stage
        return stages

    def _watch(self, **kw: Any) -> CollectionChangeStream[Any]:
        stages = kw.pop("pipeline", None)
        return self._coll.watch(stages if stages is not None else self._stages(), full_document="updateLookup",
                                max_await_time_ms=self._s.max_await_ms, **kw)

    def _open_stream(self) -> CollectionChangeStream[Any]:
        if self._stream is not None:
            return self._stream
        st = self._state
        batch = 1 if self._one_by_one else self._s.batch_size
        try:
            if st.token is not None:
                self._stream = self._watch(resume_after=st.token, batch_size=batch)
            elif st.start_at is not None:
                self._stream = self._watch(start_at_operation_time=st.start_at, batch_size=batch)
            else:
                self._stream = self._watch(batch_size=batch)
        except OperationFailure as exc:
            if st.token is None or is_transient(exc) or is_position_lost(exc) or is_too_large(exc):
                raise
            self._probe_without_token(exc)
        if st.unconfirmed:  # the re-sync's start position was resumed: it fit in the oplog window
            st.unconfirmed, st.lost_resyncs = False, 0
            self._window_metric.set(0)
        assert self._stream is not None
        return self._stream

    def _probe_without_token(self, exc: OperationFailure) -> None:
        """The server refused the saved token: position lost if a stream without it opens (as Debezium)."""
        try:
            self._watch(batch_size=1).close()
        except OperationFailure as probe:
            if probe.code == NOT_A_REPLICA_SET:
                raise self._standalone_error() from probe
            if is_transient(probe):
                raise
            raise MongoSourceError(
                f"source {self._ns}: MongoDB rejects the saved resume token ({error_name(exc)}: {exc}) and "
                f"cannot open a change stream at all ({error_name(probe)}: {probe}); check the user's "
                "privileges (changeStream, find) and that the source is a replica set"
            ) from probe
        raise _Lost(f"saved resume token rejected ({error_name(exc)})")

    def _close_stream(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            except PyMongoError:
                pass
            self._stream = None

    def _read_stream(self) -> list[SourceItem]:
        """Events up to `batch_size`, until a getMore comes back empty; advances the token."""
        stream = self._open_stream()
        st = self._state
        out: list[SourceItem] = []
        limit = 1 if self._one_by_one else self._s.batch_size
        before_split = st.token
        prior: Any = st.token  # a position just before `change` (the previous event's _id): no per-event copy
        while len(out) < limit:
            change = stream.try_next()
            if change is None:
                break
            if "splitEvent" in change:
                if self._fragments is None:
                    before_split = _plain(prior)
                prior = change["_id"]
                change = self._reassemble(change)
                if change is None:
                    continue
            op = change["operationType"]
            if op in _GONE_OPS or op == "invalidate":
                self._close_stream()
                st.token = _plain(prior) if prior is not None else st.token
                self._namespace_gone(self._gone_reason(change))
                return out
            prior = change["_id"]
            if op in _DATA_OPS:
                out.append(self._change_item(change))
        token = stream.resume_token  # the last event's or the post-batch token (a copy: read once)
        if self._fragments is not None:
            token = before_split  # never commit a position inside a split event
        if token is not None:
            st.token, st.start_at = _plain(token), None
        return out

    def _reassemble(self, fragment: Any) -> Any:
        """Merge `splitEvent` fragments; the whole event when the last arrives, else None."""
        part = dict(fragment.items())  # values decoded with the stream's (tz-aware, raw) codec options
        frag = part.pop("splitEvent")
        self._fragments = {**(self._fragments or {}), **part}
        if frag["fragment"] < frag["of"]:
            return None
        whole, self._fragments = self._fragments, None
        return whole

    def _gone_reason(self, change: Any) -> str:
        op = change["operationType"]
        if op == "rename":
            to = change.get("to") or {}
            return f"the collection was renamed to {to.get('db')}.{to.get('coll')}"
        if op == "drop":
            return "the collection was dropped"
        if op == "dropDatabase":
            return "the database was dropped"
        return "the stream was invalidated (a collection was renamed onto it, or it was dropped)"

    def _change_item(self, change: Any) -> SourceItem:
        data = change["_id"]["_data"]
        key = encode_key(change["documentKey"]["_id"])
        event_id = mongo_event_id(self._ns, data)
        wall = change.get("wallTime")
        time_ms = int(wall.timestamp() * 1000) if wall is not None else change["clusterTime"].time * 1000
        op = change["operationType"]
        full = change.get("fullDocument")
        try:
            value = None if full is None else check_document(_raw(full), self._s.max_document_bytes)
        except UnsupportedDocument as exc:
            coords = {"namespace": self._ns, "resume_token": data, "key": key, "op": op}
            return self._dead(exc, bytes(_raw(full).raw), event_id, key, coords)
        if op == "update" and value is None:
            op = "delete"
        self._latency.observe(max(0, now_ms() - time_ms))
        return Event(key=key, value=value, event_time_ms=time_ms, event_id=event_id, source=self._source, op=op)

    # -- events over 16 MiB ---------------------------------------------------------
    def _too_large(self, exc: PyMongoError) -> list[SourceItem]:
        if self._s.oversize_handling != "skip":
            raise MongoSourceError(
                f"source {self._ns}: a change event after resume token {self._state.token} is larger than "
                f"16 MiB ({error_name(exc)}); every restart would stop at it. Set source.oversize-handling: "
                "skip to dead-letter such events (document key and token kept), or source.split-large-events: "
                "true (MongoDB 6.0.9+) if the event has several large fields."
            ) from exc
        if not self._one_by_one:
            self._one_by_one = True  # read single events up to the one that does not fit
            return []
        return [self._skip_oversized(exc)]

    def _skip_oversized(self, exc: PyMongoError) -> SourceItem:
        """Read the next event without its documents: a dead letter with its key and token."""
        slim = [{"$project": {"fullDocument": 0, "updateDescription": 0, "fullDocumentBeforeChange": 0}}]
        deadline = time.monotonic() + 30
        with self._watch(pipeline=slim, resume_after=self._state.token, batch_size=1) as stream:
            change = stream.try_next()
            while change is None and time.monotonic() < deadline:
                change = stream.try_next()
        if change is None:
            raise MongoSourceError(f"source {self._ns}: cannot read past an oversized event: {exc}") from exc
        data = change["_id"]["_data"]
        key = encode_key(change["documentKey"]["_id"]) if "documentKey" in change else ""
        coords = {"namespace": self._ns, "resume_token": data, "key": key, "op": change["operationType"]}
        self._state.token, self._one_by_one = _plain(change["_id"]), False
        err = UnsupportedDocument(ErrorCode.OVERSIZED, f"change event larger than 16 MiB ({error_name(exc)}); "
                                                       "skipped (source.oversize-handling: skip)")
        return self._dead(err, bytes(_raw(change).raw), mongo_event_id(self._ns, data), key, coords)

    # -- renames, drops, halts --------------------------------------------------------
    def _namespace_gone(self, reason: str) -> None:
        self._gone_metric.set(1)
        if self._s.namespace_gone == "follow":
            log.warning("source %s: %s; following: re-sync when a collection exists under the name", self._ns, reason)
            self._resync_reason = f"{reason} (following, source.namespace-gone: follow)"
            return
        self._halt("namespace", (
            f"source {self._ns}: {reason}. The source stopped and left the target as it is (a re-sync of "
            "an absent namespace would delete every row). Point source.collections at the new name, or set "
            "source.namespace-gone: follow to re-sync whatever collection is (or will be) under this name."))

    def _halt(self, kind: str, message: str) -> None:
        st = self._state
        st.halted, st.halt_kind, st.scan = message, kind, None
        self._resync_reason = None
        self._halt_logged = 0.0
        self._log_halted()

    def _unhalt(self) -> bool:
        """A namespace halt lifts when the source is now configured to follow."""
        st = self._state
        if st.halt_kind == "namespace" and self._s.namespace_gone == "follow":
            self._resync_reason = f"following after: {st.halted}"
            st.halted = st.halt_kind = None
            return True
        return False

    def _log_halted(self) -> None:
        if time.monotonic() - self._halt_logged >= _HALT_LOG_INTERVAL_S:
            self._halt_logged = time.monotonic()
            log.error("%s", self._state.halted)

    # -- SnapshotLoader -----------------------------------------------------------
    def _position_lost(self, reason: str) -> None:
        st = self._state
        if self._s.snapshot_mode != "when_needed":
            raise MongoSourceError(
                f"source {self._ns}: the change stream position is lost ({reason}) and "
                f"snapshot-mode is {self._s.snapshot_mode!r}, which never re-syncs after start; "
                "events may have been missed. Set source.snapshot-mode: when_needed to re-sync "
                "automatically, or reset this pipeline's state to start over."
            )
        if st.unconfirmed or st.scan is not None:
            st.lost_resyncs += 1
            if st.lost_resyncs >= _LOST_RESYNCS_TO_HALT:
                self._window_metric.set(1)
                self._halt("oplog", (
                    f"source {self._ns}: re-sync generation {st.generation} lost its start position ({reason}) "
                    f"{st.lost_resyncs} times in a row: a re-sync takes longer than the oplog window, so it "
                    "can never finish. Make the oplog hold longer (replSetResizeOplog, or "
                    "storage.oplogMinRetentionHours), raise or lift source.snapshot-max-docs-per-second, raise "
                    "source.snapshot-chunk-size, or re-sync at a quieter time; then restart the pipeline."))
                return
            log.warning("source %s: the re-sync's start position left the oplog (%s); retrying once", self._ns, reason)
        st.unconfirmed = False
        self._resync_reason = reason  # begun by the next _step, where network errors are handled

    def _begin_resync(self, reason: str) -> bool:
        """Open a stream, keep its start, start a scan; False while the namespace is absent."""
        st = self._state
        uid = self._collection_uuid()
        if uid is None:
            return self._absent(reason)
        self._gone_metric.set(0)
        with self._client.start_session(causal_consistency=True) as session:
            stream = self._watch(session=session)
            try:
                token = _plain(stream.resume_token)
            finally:
                stream.close()
            op_time = session.operation_time
        if token is None and op_time is None:
            raise MongoSourceError(f"source {self._ns}: server returned neither a postBatchResumeToken "
                                   "nor an operationTime for a new change stream")
        # a new number even after an abandoned attempt: rows it saw must not pass for seen by this one
        gen = max(st.generation, st.last_started, st.scan.generation if st.scan else 0) + 1
        st.last_started = gen
        start_ms = token_time_ms(token) if token is not None else (op_time.time * 1000 if op_time else None)
        # The generation's start time (marker event time, for the Materializer's sweep rule):
        # never earlier than the start position; later only sweeps rows the replay restores.
        st.scan = ScanProgress(gen, token, max(start_ms or 0, now_ms()),
                               start_at=op_time if token is None else None, read_after=op_time, uuid=uid)
        st.resyncs = (st.resyncs + [f"generation {gen}: {reason}"])[-10:]
        log.warning("source %s: re-sync as generation %d (%s)", self._ns, gen, reason)
        return True

    def _absent(self, reason: str) -> bool:
        """The namespace does not exist: wait (follow, or first start allowed without it) or halt."""
        self._gone_metric.set(1)
        first = self._state.generation == 0 and not self._s.require_collection
        if self._s.namespace_gone == "follow" or first:
            self._failures += 1
            self._wake = time.monotonic() + self._reconnect.backoff(min(self._failures - 1, 30))
            return False
        self._halt("namespace", (
            f"source {self._ns}: the collection does not exist (re-sync needed: {reason}). The source stopped "
            "and left the target as it is (a re-sync of an absent namespace would delete every row). Restore "
            "or point source.collections at the collection, or set source.namespace-gone: follow."))
        return False

    def _scan_chunk(self, sc: ScanProgress) -> list[SourceItem]:
        self._probe_start(sc)
        rate = self._s.max_docs_per_second
        n = self._s.chunk_size if rate <= 0 else max(1, min(self._s.chunk_size, int(rate)))
        docs = self._read_chunk(sc, n)
        out = [self._snapshot_item(raw, sc) for raw in docs]
        if docs:
            sc.last_id, sc.has_last = _plain(docs[-1]["_id"]), True
            sc.docs += len(docs)
        if rate > 0:
            self._wake = time.monotonic() + len(docs) / rate
        if len(docs) < n:
            out.extend(self._finish_scan(sc))
        return out

    def _probe_start(self, sc: ScanProgress) -> None:
        """Every `oplog_probe_interval_s`, resume at the re-sync's start: 286 here ends a doomed scan early."""
        if time.monotonic() < self._next_probe:
            return
        self._next_probe = time.monotonic() + self._s.oplog_probe_interval_s
        if sc.start_token is not None:
            self._watch(resume_after=sc.start_token, batch_size=1).close()
        elif sc.start_at is not None:
            self._watch(start_at_operation_time=sc.start_at, batch_size=1).close()

    def _read_chunk(self, sc: ScanProgress, n: int) -> list[Any]:
        """The next `n` documents in `_id` index order after `sc.last_id`, across every BSON type.

        `min` (inclusive) with an explicit `_id` index hint walks the index; `$gt` would
        stop at the end of the last `_id`'s type. Majority read concern with
        `afterClusterTime` at the stream's start: a lagging secondary waits, never hides writes.
        """
        coll = self._coll.with_options(read_concern=_MAJORITY)
        bounds: dict[str, Any] = {"min": {"_id": sc.last_id}} if sc.has_last else {}
        extra = 1 if sc.has_last else 0
        with self._client.start_session(causal_consistency=True) as session:
            if sc.read_after is not None:
                session.advance_operation_time(sc.read_after)
            docs = list(coll.find({}, sort=[("_id", 1)], hint=[("_id", 1)], limit=n + extra,
                                  batch_size=n + extra, session=session, **bounds))
        if sc.has_last and docs and encode_key(docs[0]["_id"]) == encode_key(sc.last_id):
            docs = docs[1:]
        return docs[:n]

    def _finish_scan(self, sc: ScanProgress) -> list[SourceItem]:
        """The marker, if the scan provably covered the collection it started on; else a new re-sync."""
        st = self._state
        if self._collection_uuid() != sc.uuid:
            st.scan = None
            self._resync_reason = "the collection was renamed, dropped or replaced during the re-sync"
            log.warning("source %s: %s; generation %d is incomplete", self._ns, self._resync_reason, sc.generation)
            return []
        st.token, st.start_at, st.generation, st.scan = (
            None if sc.start_token is None else dict(sc.start_token), sc.start_at, sc.generation, None)
        st.uuid, st.cluster, st.unconfirmed = sc.uuid, self._client.admin.command("hello").get("setName"), True
        self._verified = True
        log.info("source %s: re-sync generation %d complete (%d documents)", self._ns, sc.generation, sc.docs)
        return [Event(
            key=GENERATION_KEY,
            value={"generation": sc.generation, "complete": True, "namespace": self._ns,
                   "uuid": (sc.uuid or b"").hex()},
            event_time_ms=sc.start_time_ms,
            event_id=snapshot_event_id(self._ns, sc.generation, GENERATION_KEY),
            source=self._source,
            op="generation",
            headers=(("sf-generation", str(sc.generation).encode()),),
        )]

    def _snapshot_item(self, raw: Any, sc: ScanProgress) -> SourceItem:
        key = encode_key(raw["_id"])
        event_id = snapshot_event_id(self._ns, sc.generation, key)
        try:
            value = check_document(raw, self._s.max_document_bytes)
        except UnsupportedDocument as exc:
            coords = {"namespace": self._ns, "generation": sc.generation, "key": key, "op": "snapshot"}
            return self._dead(exc, bytes(raw.raw), event_id, key, coords)
        return Event(
            key=key, value=value, event_time_ms=sc.start_time_ms, event_id=event_id,
            source=self._source, op="snapshot", headers=(("sf-generation", str(sc.generation).encode()),),
        )

    # -- failures -----------------------------------------------------------------
    def _dead(self, exc: UnsupportedDocument, payload: bytes, event_id: str, key: str,
              coords: dict[str, Any]) -> DeadLetter:
        rec = RawRecord(payload=bytes(payload), event_id=event_id, source=self._source, key=key.encode(), coords=coords)
        return counted_dead_letter(rec, code=exc.error_code, stage=self._step_id, pipeline=self._s.pipeline, exc=exc)

    def _backoff(self, exc: BaseException) -> None:
        self._failures += 1
        delay = self._reconnect.backoff(min(self._failures - 1, 30))
        self._wake = time.monotonic() + delay
        log.warning("source %s: %s; reconnecting in %.2fs (attempt %d)", self._ns, exc, delay, self._failures)


def _raw(doc: Any) -> RawBSONDocument:
    """`doc` as raw BSON (a reassembled split event holds plain dicts)."""
    if isinstance(doc, RawBSONDocument):
        return doc
    from bson import encode

    return RawBSONDocument(encode(doc), RAW_OPTIONS)


class MongoChangeSource(FixedPartitionedSource[SourceItem, NamespaceState]):
    """Change streams of `settings.collections`, one partition per namespace."""

    def __init__(self, settings: MongoSourceSettings) -> None:
        for name, value, allowed in (("snapshot_mode", settings.snapshot_mode, SNAPSHOT_MODES),
                                     ("namespace_gone", settings.namespace_gone, NAMESPACE_GONE_MODES),
                                     ("oversize_handling", settings.oversize_handling, OVERSIZE_MODES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.settings = settings

    def list_parts(self) -> list[str]:
        pin_thread_state()
        return [f"{self.settings.database}.{c}" for c in self.settings.collections]

    def build_part(self, step_id: str, for_part: str, resume_state: NamespaceState | None) -> _NamespacePartition:
        state = resume_state if resume_state is not None else NamespaceState(token=self.settings.initial_token)
        return _NamespacePartition(self.settings, step_id, for_part, state, fresh=resume_state is None)
