"""In-memory data and oplog of the test MongoDB server.

`Store` keeps databases -> collections -> documents (ordered by `_id` in
BSON order) and a bounded oplog. Every write appends oplog entries; change
streams (`changes.py`) read them. All methods run under `Store.lock`;
`Store.changed` is notified after every write so waiting getMores wake up.
"""

from __future__ import annotations

import bisect
import copy
import datetime
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bson import Timestamp

from tests.mongo_server.query import apply_update, is_replacement, matches, sort_key, upsert_seed

__all__ = ["Collection", "OplogEntry", "ServerError", "Store"]


class ServerError(Exception):
    """A command error the server replies with (`ok: 0`, `code`, `errmsg`)."""

    def __init__(self, code: int, code_name: str, errmsg: str, **extra: Any) -> None:
        super().__init__(errmsg)
        self.code, self.code_name, self.errmsg, self.extra = code, code_name, errmsg, extra

    def reply(self) -> dict[str, Any]:
        return {"ok": 0, "code": self.code, "codeName": self.code_name, "errmsg": self.errmsg, **self.extra}


@dataclass(frozen=True)
class OplogEntry:
    """One oplog entry. `op` is insert/update/replace/delete/drop/rename/dropDatabase/noop.

    A `rename` entry names the source collection in `coll` and the target in `to`;
    `dropped_target` is true when it replaced an existing target (dropTarget).
    """

    seq: int
    ts: Timestamp
    wall: datetime.datetime
    db: str
    coll: str
    op: str
    doc_id: Any = None
    doc: dict[str, Any] | None = None
    updated: dict[str, Any] | None = None
    removed: list[str] | None = None
    to: str | None = None
    dropped_target: bool = False


@dataclass
class Collection:
    """Documents by `sort_key(_id)`, plus the sorted list of those keys.

    `uuid`: like MongoDB's collection UUID (listCollections `info.uuid`): new for
    every created collection, kept by a rename within the database.
    """

    docs: dict[Any, dict[str, Any]] = field(default_factory=dict)
    keys: list[Any] = field(default_factory=list)
    uuid: uuid.UUID = field(default_factory=uuid.uuid4)

    def get(self, doc_id: Any) -> dict[str, Any] | None:
        return self.docs.get(sort_key(doc_id))

    def put(self, doc: dict[str, Any]) -> None:
        k = sort_key(doc["_id"])
        if k not in self.docs:
            bisect.insort(self.keys, k)
        self.docs[k] = doc

    def remove(self, doc_id: Any) -> None:
        k = sort_key(doc_id)
        if self.docs.pop(k, None) is not None:
            del self.keys[bisect.bisect_left(self.keys, k)]

    def index_range(self, lo: Any = None, hi: Any = None) -> Iterator[dict[str, Any]]:
        """Documents in `_id` index order from `lo` (inclusive) to `hi` (exclusive), across all types.

        What `find(..., hint={_id: 1}, min={_id: lo}, max={_id: hi})` walks on a real server:
        index bounds, unlike `$gt`/`$lt` predicates, are not bracketed by BSON type.
        """
        start = 0 if lo is None else bisect.bisect_left(self.keys, sort_key(lo))
        end = len(self.keys) if hi is None else bisect.bisect_left(self.keys, sort_key(hi))
        for k in self.keys[start:end]:
            yield self.docs[k]

    def scan(self, flt: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Documents matching `flt` in `_id` order; `_id` range filters use the index.

        `$gt`/`$gte` only position the walk; `matches` then applies MongoDB's type
        bracketing (`{_id: {$gt: 5}}` never matches a string `_id`).
        """
        start = 0
        cond = flt.get("_id")
        if isinstance(cond, Mapping) and ("$gt" in cond or "$gte" in cond):
            if "$gt" in cond:
                start = bisect.bisect_right(self.keys, sort_key(cond["$gt"]))
            else:
                start = bisect.bisect_left(self.keys, sort_key(cond["$gte"]))
        elif isinstance(cond, Mapping) and set(cond) == {"$in"}:
            keys = sorted({sort_key(v) for v in cond["$in"]})
            rest = {k: v for k, v in flt.items() if k != "_id"}
            for k in keys:
                doc = self.docs.get(k)
                if doc is not None and matches(doc, rest):
                    yield doc
            return
        elif cond is not None and not isinstance(cond, Mapping):
            doc = self.get(cond)
            if doc is not None and matches(doc, flt):
                yield doc
            return
        for k in self.keys[start:]:
            doc = self.docs[k]
            if matches(doc, flt):
                yield doc


def _dup_key(ns: str, doc_id: Any) -> ServerError:
    return ServerError(
        11000,
        "DuplicateKey",
        f"E11000 duplicate key error collection: {ns} index: _id_ dup key: {{ _id: {doc_id!r} }}",
        keyPattern={"_id": 1},
        keyValue={"_id": doc_id},
    )


class Store:
    """Databases, collections and the bounded oplog (`oplog_size` entries)."""

    def __init__(self, oplog_size: int = 100_000, noop_interval_s: float = 10.0) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.dbs: dict[str, dict[str, Collection]] = {}
        self.oplog: deque[OplogEntry] = deque()
        self.oplog_size = oplog_size
        self.noop_interval_s = noop_interval_s
        self.last_seq = 0
        self._last_ts = Timestamp(0, 0)
        self.cursor_loss_code = 286  # what an open change stream overtaken by the oplog answers (286 or 136)

    # -- oplog ---------------------------------------------------------------
    def _next_ts(self) -> Timestamp:
        secs = int(time.time())
        if secs <= self._last_ts.time:
            ts = Timestamp(self._last_ts.time, self._last_ts.inc + 1)
        else:
            ts = Timestamp(secs, 1)
        self._last_ts = ts
        return ts

    def log(self, db: str, coll: str, op: str, **kw: Any) -> OplogEntry:
        self.last_seq += 1
        entry = OplogEntry(
            self.last_seq, self._next_ts(), datetime.datetime.now(datetime.UTC), db, coll, op, **kw
        )
        self.oplog.append(entry)
        while len(self.oplog) > self.oplog_size:
            self.oplog.popleft()
        self.changed.notify_all()
        return entry

    @property
    def first_seq(self) -> int:
        return self.oplog[0].seq if self.oplog else self.last_seq + 1

    @property
    def last_ts(self) -> Timestamp:
        return self._last_ts

    def roll_oplog(self) -> None:
        """Push every current entry out of the oplog (as heavy write traffic would)."""
        with self.lock:
            for _ in range(self.oplog_size + 1):
                self.log("admin", "$noop", "noop")

    def maybe_noop(self) -> None:
        """Write a periodic no-op like a replica set does, so idle streams advance."""
        if not self.oplog or time.time() - self.oplog[-1].wall.timestamp() >= self.noop_interval_s:
            self.log("admin", "$noop", "noop")

    # -- collections ----------------------------------------------------------
    def coll(self, db: str, name: str, *, create: bool = False) -> Collection | None:
        colls = self.dbs.get(db)
        if colls is None or name not in colls:
            if not create:
                return None
            colls = self.dbs.setdefault(db, {})
            colls[name] = Collection()
        return colls[name]

    def drop(self, db: str, name: str) -> bool:
        with self.lock:
            colls = self.dbs.get(db, {})
            if name not in colls:
                return False
            del colls[name]
            self.log(db, name, "drop")
            return True

    def drop_database(self, db: str) -> None:
        """Like MongoDB: a `drop` entry per collection, then one `dropDatabase` entry."""
        with self.lock:
            for name in list(self.dbs.get(db, {})):
                self.drop(db, name)
            self.dbs.pop(db, None)
            self.log(db, "$cmd", "dropDatabase")

    def rename(self, db: str, name: str, to: str, *, drop_target: bool) -> None:
        """renameCollection within `db` (errors as MongoDB: 26, 48, 20)."""
        with self.lock:
            colls = self.dbs.get(db, {})
            if name not in colls:
                raise ServerError(26, "NamespaceNotFound", f"Source collection {db}.{name} does not exist")
            if name == to:
                raise ServerError(20, "IllegalOperation", "Can't rename a collection to itself")
            existed = to in colls
            if existed and not drop_target:
                raise ServerError(48, "NamespaceExists", f"target namespace exists: {db}.{to}")
            colls[to] = colls.pop(name)
            self.log(db, name, "rename", to=to, dropped_target=existed)

    # -- writes ---------------------------------------------------------------
    def insert(self, db: str, name: str, doc: dict[str, Any]) -> None:
        with self.lock:
            c = self.coll(db, name, create=True)
            assert c is not None
            if c.get(doc["_id"]) is not None:
                raise _dup_key(f"{db}.{name}", doc["_id"])
            doc = copy.deepcopy(doc)
            c.put(doc)
            self.log(db, name, "insert", doc_id=doc["_id"], doc=copy.deepcopy(doc))

    def update(
        self, db: str, name: str, flt: Mapping[str, Any], upd: Any, *, upsert: bool, multi: bool
    ) -> tuple[int, int, Any]:
        """Returns (matched, modified, upserted _id or None)."""
        with self.lock:
            replacement = is_replacement(upd)
            c = self.coll(db, name, create=upsert)
            targets = list(c.scan(flt)) if c is not None else []
            if not multi:
                targets = targets[:1]
            modified = 0
            for old in targets:
                if replacement:
                    new = {"_id": old["_id"], **{k: v for k, v in upd.items() if k != "_id"}}
                    if "_id" in upd and sort_key(upd["_id"]) != sort_key(old["_id"]):
                        raise ServerError(66, "ImmutableField", "the (immutable) field '_id' was found to have been altered")
                    op, kw = "replace", {"doc": copy.deepcopy(new)}
                else:
                    new, updated, removed = apply_update(old, upd)
                    op, kw = "update", {"updated": copy.deepcopy(updated), "removed": removed}
                if new != old:
                    assert c is not None
                    c.put(copy.deepcopy(new))
                    self.log(db, name, op, doc_id=old["_id"], **kw)
                    modified += 1
            if targets or not upsert:
                return len(targets), modified, None
            seed = upsert_seed(flt)
            if replacement:
                doc = {"_id": seed.get("_id", upd.get("_id")), **{k: v for k, v in upd.items() if k != "_id"}}
            else:
                doc, _, _ = apply_update(seed, upd)
            if doc.get("_id") is None:
                from bson import ObjectId

                doc["_id"] = ObjectId()
            self.insert(db, name, doc)
            return 0, 0, doc["_id"]

    def delete(self, db: str, name: str, flt: Mapping[str, Any], *, limit: int) -> int:
        with self.lock:
            c = self.coll(db, name)
            if c is None:
                return 0
            targets = list(c.scan(flt))
            if limit:
                targets = targets[:limit]
            for doc in targets:
                c.remove(doc["_id"])
                self.log(db, name, "delete", doc_id=doc["_id"])
            return len(targets)
