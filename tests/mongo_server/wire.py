"""The wire-level test MongoDB server: mockupdb parses and frames, this answers.

`WireServer` is a `mockupdb.MockupDB` whose connection loop hands every
request to `CommandHandler` without holding MockupDB's global lock, so a
change-stream getMore can wait (`maxAwaitTimeMS`) while other clients work.
It reports itself as the primary of replica set `rs0` (wire version 17), so
real pymongo allows change streams and retryable writes.
"""

from __future__ import annotations

import datetime
import errno
import itertools
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
import mockupdb
from bson import Binary, ObjectId

from tests.mongo_server.changes import ChangeCursor, open_change_stream
from tests.mongo_server.query import QueryError, matches, sort_key
from tests.mongo_server.store import ServerError, Store

__all__ = ["CommandHandler", "Failpoint", "WireServer"]

MAX_AWAIT_CAP_S = 1.0


@dataclass
class Failpoint:
    """Fail the next `times` commands named `command` (like MongoDB's failCommand)."""

    command: str
    times: int
    code: int = 91
    errmsg: str = "injected failure"
    labels: list[str] = field(default_factory=list)
    close_connection: bool = False


@dataclass
class _FindCursor:
    ns: str
    docs: list[dict[str, Any]]


class _Hangup(Exception):
    pass


class CommandHandler:
    """Answers commands against a `Store`. One instance serves all connections."""

    def __init__(self, store: Store, address: Callable[[], str], max_bson_size: int = 16 * 1024 * 1024) -> None:
        self.store = store
        self.address = address
        self.max_bson_size = max_bson_size
        self.failpoints: list[Failpoint] = []
        self.cursors: dict[int, _FindCursor | ChangeCursor] = {}
        self._ids = itertools.count(1000)
        self.stopping = threading.Event()
        self.commands_seen: dict[str, int] = {}
        self.standalone = False  # answer like a standalone mongod: no setName, $changeStream -> 40573
        self.fresh_stream_lookback = 0  # test-server only: fresh streams start this many entries back
        self.reads: list[dict[str, Any]] = []  # find/aggregate: {"cmd", "readConcern", "$readPreference"}

    # -- dispatch -------------------------------------------------------------
    def handle(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        name = next(iter(cmd))
        key = name.lower()
        self.commands_seen[key] = self.commands_seen.get(key, 0) + 1
        fp = self._failpoint(key)
        if fp is not None:
            if fp.close_connection:
                raise _Hangup()
            return ServerError(fp.code, "InjectedFailure", fp.errmsg, errorLabels=fp.labels).reply()
        fn = getattr(self, "cmd_" + key, None)
        if fn is None:
            return ServerError(59, "CommandNotFound", f"no such command: '{name}'").reply()
        try:
            if key in ("find", "aggregate", "count"):
                self._check_read_concern(key, cmd)
            reply = fn(cmd, db)
        except ServerError as exc:
            return exc.reply()
        except QueryError as exc:
            return ServerError(exc.code, "BadValue", str(exc)).reply()
        except Exception as exc:  # noqa: BLE001 - a bug in the test server answers, never hangs the client
            return ServerError(1, "InternalError", f"test server: {type(exc).__name__}: {exc}").reply()
        reply.setdefault("ok", 1)
        reply.setdefault("operationTime", self.store.last_ts)
        return reply

    def _failpoint(self, key: str) -> Failpoint | None:
        if not self.failpoints:
            return None
        with self.store.lock:
            for fp in self.failpoints:
                if fp.command.lower() == key and fp.times > 0:
                    fp.times -= 1
                    return fp
        return None

    def _check_read_concern(self, key: str, cmd: Mapping[str, Any]) -> None:
        """Accept `readConcern` like a replica-set member (and record it for tests).

        Levels local / available / majority / linearizable / snapshot; `afterClusterTime`
        beyond the server's cluster time fails with 72 InvalidOptions, as
        src/mongo/db/read_concern_mongod.cpp does ("readConcern afterClusterTime value must
        not be greater than the current clusterTime"). A single member is its own majority,
        so majority reads see every acknowledged write.
        """
        rc = dict(cmd.get("readConcern") or {})
        self.reads.append({"cmd": key, "readConcern": rc, "$readPreference": cmd.get("$readPreference")})
        level = rc.get("level", "local")
        if level not in ("local", "available", "majority", "linearizable", "snapshot"):
            raise ServerError(9, "FailedToParse", f"{level} is not a valid readConcern level")
        after = rc.get("afterClusterTime")
        if after is not None:
            last = self.store.last_ts
            if (after.time, after.inc) > (last.time, last.inc):
                raise ServerError(72, "InvalidOptions",
                                  "readConcern afterClusterTime value must not be greater than the current clusterTime")

    # -- handshake and admin --------------------------------------------------
    def cmd_hello(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        me = self.address()
        if self.standalone:
            return {"isWritablePrimary": True, "ismaster": True, "helloOk": True,
                    "maxBsonObjectSize": self.max_bson_size, "maxMessageSizeBytes": 48_000_000,
                    "maxWriteBatchSize": 100_000, "localTime": datetime.datetime.now(datetime.UTC),
                    "logicalSessionTimeoutMinutes": 30, "connectionId": 1, "minWireVersion": 0,
                    "maxWireVersion": 17, "readOnly": False}
        return {
            "isWritablePrimary": True,
            "ismaster": True,
            "helloOk": True,
            "setName": "rs0",
            "setVersion": 1,
            "electionId": ObjectId("7fffffff0000000000000001"),
            "hosts": [me],
            "primary": me,
            "me": me,
            "maxBsonObjectSize": self.max_bson_size,
            "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000,
            "localTime": datetime.datetime.now(datetime.UTC),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": 1,
            "minWireVersion": 0,
            "maxWireVersion": 17,
            "readOnly": False,
            "lastWrite": {"opTime": {"ts": self.store.last_ts, "t": 1},
                          "lastWriteDate": datetime.datetime.now(datetime.UTC)},
        }

    cmd_ismaster = cmd_hello

    def cmd_ping(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        return {}

    def cmd_endsessions(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        return {}

    def cmd_buildinfo(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        return {"version": "7.0.0-streamforge-test", "versionArray": [7, 0, 0, 0]}

    def cmd_listdatabases(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        with self.store.lock:
            return {"databases": [{"name": n, "sizeOnDisk": 0, "empty": not c} for n, c in self.store.dbs.items()]}

    def cmd_listcollections(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        flt = cmd.get("filter") or {}
        with self.store.lock:
            colls = dict(self.store.dbs.get(db, {}))
        rows = [{"name": n, "type": "collection", "options": {},
                 "info": {"readOnly": False, "uuid": Binary.from_uuid(c.uuid)}}
                for n, c in sorted(colls.items())]
        if "name" in flt:
            rows = [r for r in rows if r["name"] == flt["name"]]
        return {"cursor": {"id": 0, "ns": f"{db}.$cmd.listCollections", "firstBatch": rows}}

    def cmd_create(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        with self.store.lock:
            if self.store.coll(db, cmd["create"]) is not None:
                raise ServerError(48, "NamespaceExists", f"Collection {db}.{cmd['create']} already exists.")
            self.store.coll(db, cmd["create"], create=True)
        return {}

    def cmd_createindexes(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        return {"numIndexesBefore": 1, "numIndexesAfter": 1}

    def cmd_drop(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        if not self.store.drop(db, cmd["drop"]):
            raise ServerError(26, "NamespaceNotFound", "ns not found")
        return {"ns": f"{db}.{cmd['drop']}"}

    def cmd_renamecollection(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        """`{renameCollection: "db.a", to: "db.b", dropTarget: bool}` on admin (same database only)."""
        if db != "admin":
            raise ServerError(13, "Unauthorized", "renameCollection may only be run against the admin database.")
        src_db, _, src = str(cmd["renameCollection"]).partition(".")
        dst_db, _, dst = str(cmd["to"]).partition(".")
        if src_db != dst_db:
            raise ServerError(20, "IllegalOperation", "the test server renames within one database only")
        self.store.rename(src_db, src, dst, drop_target=bool(cmd.get("dropTarget")))
        return {}

    def cmd_dropdatabase(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        self.store.drop_database(db)
        return {"dropped": db}

    def cmd_count(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        with self.store.lock:
            c = self.store.coll(db, cmd["count"])
            return {"n": 0 if c is None else sum(1 for _ in c.scan(cmd.get("query") or {}))}

    # -- writes ---------------------------------------------------------------
    def _write(self, items: list[Any], ordered: bool, one: Callable[[Any], tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        n, errors, extra = 0, [], {"nModified": 0, "upserted": []}
        for i, item in enumerate(items):
            try:
                k, more = one(item)
            except (ServerError, QueryError) as exc:
                err = exc if isinstance(exc, ServerError) else ServerError(2, "BadValue", str(exc))
                errors.append({"index": i, "code": err.code, "errmsg": err.errmsg, **err.extra})
                if ordered:
                    break
                continue
            n += k
            extra["nModified"] += more.get("nModified", 0)
            if "upserted" in more:
                extra["upserted"].append({"index": i, "_id": more["upserted"]})
        reply: dict[str, Any] = {"n": n}
        if errors:
            reply["writeErrors"] = errors
        return reply | extra

    def _check_size(self, doc: Any) -> None:
        if isinstance(doc, Mapping):
            size = len(bson.encode(doc))
            if size > self.max_bson_size:
                raise ServerError(10334, "BSONObjectTooLarge",
                                  f"BSONObj size: {size} is invalid. Size must be between 0 and {self.max_bson_size}")

    def cmd_insert(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        name = cmd["insert"]

        def one(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            self._check_size(doc)
            doc = dict(doc)
            doc.setdefault("_id", ObjectId())
            self.store.insert(db, name, doc)
            return 1, {}

        r = self._write(list(cmd.get("documents", [])), cmd.get("ordered", True), one)
        r.pop("nModified"), r.pop("upserted")
        return r

    def cmd_update(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        name = cmd["update"]

        def one(u: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
            self._check_size(u["u"])
            matched, modified, upserted = self.store.update(
                db, name, u.get("q") or {}, u["u"], upsert=bool(u.get("upsert")), multi=bool(u.get("multi"))
            )
            if upserted is not None:
                return 1, {"upserted": upserted}
            return matched, {"nModified": modified}

        r = self._write(list(cmd.get("updates", [])), cmd.get("ordered", True), one)
        if not r["upserted"]:
            r.pop("upserted")
        return r

    def cmd_delete(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        name = cmd["delete"]

        def one(d: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
            return self.store.delete(db, name, d.get("q") or {}, limit=int(d.get("limit", 0))), {}

        r = self._write(list(cmd.get("deletes", [])), cmd.get("ordered", True), one)
        r.pop("nModified"), r.pop("upserted")
        return r

    # -- reads ----------------------------------------------------------------
    def _cursor_reply(self, ns: str, cid: int, batch: list[Any], first: bool, **extra: Any) -> dict[str, Any]:
        return {"cursor": {"id": cid, "ns": ns, "firstBatch" if first else "nextBatch": batch, **extra}}

    def cmd_find(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        name = cmd["find"]
        ns = f"{db}.{name}"
        sort = list((cmd.get("sort") or {}).items())
        skip, limit = int(cmd.get("skip", 0)), abs(int(cmd.get("limit", 0)))
        flt = cmd.get("filter") or {}
        with self.store.lock:
            c = self.store.coll(db, name)
            if "min" in cmd or "max" in cmd:
                found = iter(()) if c is None else self._index_walk(c, cmd, flt)
            else:
                found = iter(()) if c is None else c.scan(flt)
            if limit and sort in ([], [("_id", 1)]):  # scan order is _id order: stop early
                found = itertools.islice(found, skip + limit)
            docs = list(found)
        for field_name, direction in reversed(sort):
            docs.sort(key=lambda d, f=field_name: sort_key(d.get(f)), reverse=direction == -1)
        docs = docs[skip:]
        if limit:
            docs = docs[:limit]
        batch_size = int(cmd.get("batchSize", 101)) or len(docs)
        if cmd.get("singleBatch"):
            docs = docs[:batch_size]
        return self._first_batch(ns, docs, batch_size)

    @staticmethod
    def _index_walk(c: Any, cmd: Mapping[str, Any], flt: Mapping[str, Any]) -> Any:
        """find with `min`/`max` index bounds: they need `hint` (error 51173 as mongod), walk all types."""
        hint = cmd.get("hint")
        if hint is None:
            raise ServerError(51173, "Location51173",
                              "When using min()/max() a hint of which index to use must be provided")
        keys = [list(b) for b in (cmd.get("min"), cmd.get("max")) if b]
        if (isinstance(hint, Mapping) and list(hint) != ["_id"]) or (isinstance(hint, str) and hint != "_id_") \
                or any(k != ["_id"] for k in keys):
            raise ServerError(51174, "Location51174",
                              "The index implied by min() / max() must match the hint (the test server has only _id_)")
        lo = (cmd.get("min") or {}).get("_id") if cmd.get("min") else None
        hi = (cmd.get("max") or {}).get("_id") if cmd.get("max") else None
        return (d for d in c.index_range(lo, hi) if matches(d, flt))

    def _first_batch(self, ns: str, docs: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
        batch, rest = docs[:batch_size], docs[batch_size:]
        cid = 0
        if rest:
            cid = next(self._ids)
            self.cursors[cid] = _FindCursor(ns, rest)
        return self._cursor_reply(ns, cid, batch, True)

    def cmd_aggregate(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        pipeline = list(cmd.get("pipeline") or [])
        if not pipeline or "$changeStream" not in pipeline[0]:
            return self._simple_aggregate(cmd, db, pipeline)
        if self.standalone:
            raise ServerError(40573, "Location40573", "The $changeStream stage is only supported on replica sets")
        coll = cmd["aggregate"] if cmd["aggregate"] != 1 else None
        with self.store.lock:
            cursor = open_change_stream(self.store, db, coll, pipeline[0]["$changeStream"], pipeline[1:],
                                        self.max_bson_size, self.fresh_stream_lookback)
            batch_size = int((cmd.get("cursor") or {}).get("batchSize", 101))
            events, pbrt = cursor.read(self.store, batch_size)
            cid = 0 if cursor.invalidated else next(self._ids)
            if cid:
                self.cursors[cid] = cursor
        return self._cursor_reply(cursor.ns, cid, events, True, postBatchResumeToken=pbrt)

    def _simple_aggregate(self, cmd: Mapping[str, Any], db: str, pipeline: list[Any]) -> dict[str, Any]:
        """$match / $sort / $skip / $limit / $group with a constant _id and $sum (count_documents)."""
        with self.store.lock:
            c = self.store.coll(db, cmd["aggregate"])
            docs = [] if c is None else list(c.scan({}))
        for stage in pipeline:
            (name, arg), = stage.items()
            if name == "$match":
                docs = [d for d in docs if matches(d, arg)]
            elif name == "$sort":
                for f, direction in reversed(list(arg.items())):
                    docs.sort(key=lambda d, f=f: sort_key(d.get(f)), reverse=direction == -1)
            elif name == "$skip":
                docs = docs[int(arg):]
            elif name == "$limit":
                docs = docs[: int(arg)]
            elif name == "$group" and not isinstance(arg.get("_id"), str):
                out: dict[str, Any] = {"_id": arg["_id"]}
                for f, acc in arg.items():
                    if f != "_id":
                        if set(acc) != {"$sum"} or not isinstance(acc["$sum"], (int, float)):
                            raise ServerError(40324, "Location40324", f"unsupported $group accumulator {acc}")
                        out[f] = acc["$sum"] * len(docs)
                docs = [out] if docs else []
            else:
                raise ServerError(40324, "Location40324", f"the test server does not support {name} here")
        return self._first_batch(f"{db}.{cmd['aggregate']}", docs, int((cmd.get("cursor") or {}).get("batchSize", 101)))

    def cmd_getmore(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        cid = int(cmd["getMore"])
        cursor = self.cursors.get(cid)
        if cursor is None:
            raise ServerError(43, "CursorNotFound", f"cursor id {cid} not found")
        batch_size = int(cmd.get("batchSize", 0)) or 1_000_000
        if isinstance(cursor, _FindCursor):
            batch, cursor.docs = cursor.docs[:batch_size], cursor.docs[batch_size:]
            if not cursor.docs:
                self.cursors.pop(cid, None)
                cid = 0
            return self._cursor_reply(cursor.ns, cid, batch, False)
        wait_s = min(MAX_AWAIT_CAP_S, int(cmd.get("maxTimeMS", 1000)) / 1000.0)
        deadline = time.monotonic() + wait_s
        with self.store.lock:
            self.store.maybe_noop()
            while True:
                try:
                    events, pbrt = cursor.read(self.store, batch_size)
                except ServerError:
                    self.cursors.pop(cid, None)
                    raise
                left = deadline - time.monotonic()
                if events or left <= 0 or self.stopping.is_set():
                    break
                self.store.changed.wait(left)
            if cursor.invalidated:
                self.cursors.pop(cid, None)
                cid = 0
        return self._cursor_reply(cursor.ns, cid, events, False, postBatchResumeToken=pbrt)

    def cmd_killcursors(self, cmd: Mapping[str, Any], db: str) -> dict[str, Any]:
        ids = [int(c) for c in cmd.get("cursors", [])]
        for c in ids:
            self.cursors.pop(c, None)
        return {"cursorsKilled": ids, "cursorsNotFound": [], "cursorsAlive": [], "cursorsUnknown": []}


class WireServer(mockupdb.MockupDB):
    """A MockupDB that answers every request through a `CommandHandler`."""

    def __init__(self, handler: CommandHandler, port: int | None = None) -> None:
        super().__init__(port=port, request_timeout=int(1e6))
        self.handler = handler

    def _accept_loop(self) -> None:
        """Accept connections, one thread each (polls every 50 ms so `stop` is quick)."""
        sock = self._listening_sock
        try:
            sock.settimeout(0.05)
            while not self._stopped:
                try:
                    client, addr = sock.accept()
                except TimeoutError:
                    continue
                client.settimeout(None)
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                t = threading.Thread(target=self._server_loop, args=(client, addr), daemon=True)
                self._server_threads[t] = None
                self._server_socks[client] = None
                t.start()
        except OSError:  # the listener was closed by stop()
            pass

    def _server_loop(self, client: socket.socket, client_addr: Any) -> None:  # noqa: D401
        """Read requests from one connection and answer them (no global lock held)."""
        while not self._stopped:
            try:
                request = mockupdb.mock_server_receive_request(client, self)
            except (OSError, ConnectionError):
                break
            except Exception:  # noqa: BLE001 - a request we cannot parse: drop the connection
                break
            if request.flags and isinstance(request, mockupdb.OpMsg) and request.flags & 2:
                continue  # moreToCome: unacknowledged write, no reply
            if not request.is_command:
                break
            doc = dict(request.doc)
            db = doc.pop("$db", None) or (request.namespace or "admin").split(".")[0]
            try:
                reply = self.handler.handle(doc, db)
                request.replies(reply)
            except _Hangup:
                break
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, None):
                    raise
                break
        try:
            client.close()
        except OSError:
            pass
