"""Change streams of the test MongoDB server: resume tokens and event documents.

A resume token is `{"_data": HEX}` like MongoDB's: `82` + the cluster time
(seconds and increment, 8 hex digits each, as in MongoDB's KeyString form,
so `token_time` works for real tokens too) + `2B` + the oplog sequence number
(16 hex digits) + a kind byte (`00` high-water mark, `04` event, `14`
invalidate) + for a fragment of a split event `46` + the fragment number.

How it answers, and the MongoDB behaviour each mirrors (6.0-8.0):

- a token that does not parse: 9 FailedToParse (src/mongo/db/pipeline/resume_token.cpp,
  `ResumeToken::parse` / `ResumeTokenData` uasserts); `resumeAfter` an invalidate: 260
  InvalidResumeToken (only `startAfter` may start after one);
- a well-formed *event* token whose event is not in this stream's oplog (another
  cluster, a restore): 280 ChangeStreamFatalError "the resume token was not found"
  (src/mongo/db/pipeline/document_source_change_stream_ensure_resume_token_present.cpp);
  a *high-water-mark* token with no event is accepted silently, wherever it points
  (an idle token from another cluster resumes without error: DESIGN.md §10);
- a token older than the oplog: 286 ChangeStreamHistoryLost with label
  NonResumableChangeStreamError; an *open* cursor overtaken by the oplog answers
  `Store.cursor_loss_code` (286, or 136 CappedPositionLost as a tailable oplog
  cursor can report; 136 is non-resumable for drivers: specifications,
  source/change-streams/change-streams.rst "Resumable Error");
- `rename` of the watched collection: a `rename` event then `invalidate`; a rename
  *onto* it (dropTarget): `invalidate` only (jstests/change_streams/change_stream_rename_target.js);
  `drop`: `drop` then `invalidate`; `dropDatabase`: `drop` per collection, then on a
  database stream `dropDatabase` + `invalidate` (src/mongo/db/pipeline/change_stream_filter_helpers.cpp,
  buildInvalidationFilter);
- stages after `$changeStream`: `$match`, `$project`, `$unset`, `$addFields`/`$set` of
  constants and `$changeStreamSplitLargeEvent` (last stage only); an event larger than
  `max_bson_size` (16 MiB) fails with 10334 BSONObjectTooLarge, or is split into fragments
  with `splitEvent: {fragment, of}`, each with its own resume token
  (src/mongo/db/pipeline/change_stream_split_event_helpers.cpp); a pipeline that drops or
  changes `_id` fails with 280 (document_source_change_stream_check_resumability / the
  "_id field ... was modified" check).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
from bson import Timestamp

from tests.mongo_server.query import matches
from tests.mongo_server.store import OplogEntry, ServerError, Store

__all__ = ["ChangeCursor", "decode_token", "make_token", "open_change_stream"]

HWM, EVENT, INVALIDATE = "00", "04", "14"
_TOKEN = re.compile(r"^82([0-9A-F]{8})([0-9A-F]{8})2B([0-9A-F]{16})(00|04|14)(?:46([0-9A-F]{4}))?$")
SPLIT_STAGE = "$changeStreamSplitLargeEvent"
_STAGES = {"$match", "$project", "$unset", "$addFields", "$set", SPLIT_STAGE}


def make_token(ts: Timestamp, seq: int, kind: str, fragment: int | None = None) -> dict[str, str]:
    frag = "" if fragment is None else f"46{fragment:04X}"
    return {"_data": f"82{ts.time:08X}{ts.inc:08X}2B{seq:016X}{kind}{frag}"}


@dataclass(frozen=True)
class Token:
    ts: Timestamp
    seq: int
    kind: str
    fragment: int | None


def decode_token(token: Any) -> Token:
    """The parts of a token, or ServerError 9 FailedToParse (resume_token.cpp)."""
    data = token.get("_data") if isinstance(token, Mapping) else None
    m = _TOKEN.match(data) if isinstance(data, str) else None
    if m is None:
        raise ServerError(9, "FailedToParse", f"Failed to parse resume token: {token!r}")
    frag = None if m.group(5) is None else int(m.group(5), 16)
    return Token(Timestamp(int(m.group(1), 16), int(m.group(2), 16)), int(m.group(3), 16), m.group(4), frag)


def history_lost(code: int = 286) -> ServerError:
    if code == 136:
        return ServerError(136, "CappedPositionLost",
                           "CollectionScan died due to position in capped collection being deleted.")
    return ServerError(
        286,
        "ChangeStreamHistoryLost",
        "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
        errorLabels=["NonResumableChangeStreamError"],
    )


def _token_not_found(token: Any) -> ServerError:
    return ServerError(280, "ChangeStreamFatalError",
                       f"cannot resume stream; the resume token was not found. {token!r}",
                       errorLabels=["NonResumableChangeStreamError"])


def _too_large(size: int, limit: int) -> ServerError:
    return ServerError(10334, "BSONObjectTooLarge",
                       f"BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and {limit}(16MB)")


@dataclass
class ChangeCursor:
    """One open change stream: where it is (oplog seq, fragment of a split event) and what it watches."""

    db: str
    coll: str | None
    after_seq: int
    full_document: str
    stages: list[dict[str, Any]] = field(default_factory=list)
    max_bytes: int = 16 * 1024 * 1024
    after_fragment: int | None = None  # fragments of event `after_seq` up to this one were returned
    invalidated: bool = False

    @property
    def ns(self) -> str:
        return f"{self.db}.{self.coll or '$cmd.aggregate'}"

    @property
    def split(self) -> bool:
        return any(SPLIT_STAGE in s for s in self.stages)

    def _watches(self, e: OplogEntry) -> bool:
        if e.op == "noop" or e.db != self.db:
            return False
        if self.coll is None:
            return True
        return e.coll == self.coll or (e.op == "rename" and e.to == self.coll)

    def read(self, store: Store, limit: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Up to `limit` events (at most ~`max_bytes` of them) after the position, and the post-batch token."""
        resume_at = self.after_seq if self.after_fragment is not None else self.after_seq + 1
        if resume_at < store.first_seq:
            raise history_lost(store.cursor_loss_code)
        out: list[dict[str, Any]] = []
        size = 0
        oplog = store.oplog
        for i in range(resume_at - store.first_seq, len(oplog)):
            e = oplog[i]
            if len(out) >= limit:
                return out, out[-1]["_id"]
            units = self._units(store, e) if self._watches(e) else []
            skip = self.after_fragment if e.seq == self.after_seq and self.after_fragment is not None else -1
            for n, (frag, doc) in enumerate(units):
                if frag is not None and frag <= skip:
                    continue
                doc_size = len(bson.encode(doc))
                # a reply stays near 16 MiB (fragments may end a batch; an event and its invalidate stay together)
                if out and size + doc_size > self.max_bytes and (frag is not None or n == 0):
                    return out, out[-1]["_id"]
                out.append(doc)
                size += doc_size
                last_fragment = frag is None or n == len(units) - 1 or units[n + 1][0] is None
                self.after_seq, self.after_fragment = e.seq, (None if last_fragment else frag)
                if doc.get("operationType") == "invalidate":
                    self.invalidated = True
                    return out, doc["_id"]
            if not units:
                self.after_seq, self.after_fragment = e.seq, None
        return out, make_token(store.last_ts, store.last_seq, HWM)

    # -- events ---------------------------------------------------------------
    def _units(self, store: Store, e: OplogEntry) -> list[tuple[int | None, dict[str, Any]]]:
        """The documents one oplog entry produces: (fragment number or None, document)."""
        out: list[tuple[int | None, dict[str, Any]]] = []
        invalidates = self._invalidates(e)
        if not (invalidates and e.op == "rename" and e.coll != self.coll):  # rename *onto* it: invalidate only
            ev = self._apply_stages(self._event(store, e))
            if ev is not None:
                out.extend(self._fit(ev, e))
        if invalidates:
            out.append((None, {"_id": make_token(e.ts, e.seq, INVALIDATE), "operationType": "invalidate",
                               "clusterTime": e.ts, "wallTime": e.wall}))
        return out

    def _invalidates(self, e: OplogEntry) -> bool:
        if self.coll is None:
            return e.op == "dropDatabase"
        return e.op == "drop" or e.op == "rename"

    def _event(self, store: Store, e: OplogEntry) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "_id": make_token(e.ts, e.seq, EVENT),
            "operationType": e.op,
            "clusterTime": e.ts,
            "wallTime": e.wall,
            "ns": {"db": e.db} if e.op == "dropDatabase" else {"db": e.db, "coll": e.coll},
        }
        if e.op == "rename":
            ev["to"] = {"db": e.db, "coll": e.to}
        if e.op in ("drop", "rename", "dropDatabase"):
            return ev
        ev["documentKey"] = {"_id": e.doc_id}
        if e.op in ("insert", "replace"):
            ev["fullDocument"] = e.doc
        elif e.op == "update":
            ev["updateDescription"] = {
                "updatedFields": e.updated,
                "removedFields": e.removed,
                "truncatedArrays": [],
            }
            if self.full_document in ("updateLookup", "whenAvailable", "required"):
                c = store.coll(e.db, e.coll)
                ev["fullDocument"] = c.get(e.doc_id) if c is not None else None
        return ev

    def _apply_stages(self, ev: dict[str, Any]) -> dict[str, Any] | None:
        token = ev["_id"]
        for stage in self.stages:
            (name, arg), = stage.items()
            if name == "$match":
                if not matches(ev, arg):
                    return None
            elif name == "$project":
                ev = _project(ev, arg)
            elif name == "$unset":
                drop = [arg] if isinstance(arg, str) else list(arg)
                ev = {k: v for k, v in ev.items() if k not in drop}
            elif name in ("$addFields", "$set"):
                ev = {**ev, **arg}
        if ev.get("_id") != token:
            raise ServerError(280, "ChangeStreamFatalError",
                              "Encountered an event whose _id field, which contains the resume token, "
                              "was modified by the pipeline. Modifying the _id field of an event makes it "
                              "impossible to resume the stream from that point.")
        return ev

    def _fit(self, ev: dict[str, Any], e: OplogEntry) -> list[tuple[int | None, dict[str, Any]]]:
        size = len(bson.encode(ev))
        if size <= self.max_bytes:
            return [(None, ev)]
        if not self.split:
            raise _too_large(size, self.max_bytes)
        # Split by top-level fields (change_stream_split_event_helpers.cpp): each fragment
        # carries its own _id and splitEvent; a field that cannot fit alone still fails.
        groups: list[dict[str, Any]] = []
        overhead = len(bson.encode({"_id": ev["_id"], "splitEvent": {"fragment": 1, "of": 1}}))
        current: dict[str, Any] = {}
        current_size = overhead
        for k, v in ev.items():
            if k == "_id":
                continue
            field_size = len(bson.encode({k: v})) - 5
            if overhead + field_size > self.max_bytes:
                raise _too_large(overhead + field_size, self.max_bytes)
            if current and current_size + field_size > self.max_bytes:
                groups.append(current)
                current, current_size = {}, overhead
            current[k] = v
            current_size += field_size
        groups.append(current)
        n = len(groups)
        return [(i, {"_id": make_token(e.ts, e.seq, EVENT, i + 1), **g, "splitEvent": {"fragment": i + 1, "of": n}})
                for i, g in enumerate(groups)]


def _project(ev: dict[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    include = {k for k, v in spec.items() if v not in (0, False)}
    if include - {"_id"}:
        keep = include | ({"_id"} if spec.get("_id", 1) not in (0, False) else set())
        return {k: v for k, v in ev.items() if k in keep}
    return {k: v for k, v in ev.items() if k not in spec}


def _check_stages(stages: list[Any]) -> None:
    for i, stage in enumerate(stages):
        name = next(iter(stage)) if isinstance(stage, Mapping) and len(stage) == 1 else None
        if name not in _STAGES:
            raise ServerError(40324, "Location40324",
                              f"Unrecognized pipeline stage or stage not allowed in a change stream: {name}")
        if name == SPLIT_STAGE and i != len(stages) - 1:
            raise ServerError(7182802, "Location7182802",
                              "$changeStreamSplitLargeEvent can only appear at the end of a change stream pipeline")


def open_change_stream(store: Store, db: str, coll: str | None, spec: Mapping[str, Any],
                       stages: list[Any] | None = None, max_bytes: int = 16 * 1024 * 1024,
                       lookback: int = 0) -> ChangeCursor:
    """Validate a `$changeStream` stage (and the stages after it) and position a cursor (under the store lock).

    `lookback` (test-server only): a fresh stream starts that many oplog entries back,
    so its first batch carries events (as a sharded cluster's first batch can).
    """
    known = {"resumeAfter", "startAfter", "startAtOperationTime", "fullDocument",
             "fullDocumentBeforeChange", "allChangesForCluster", "showExpandedEvents"}
    unknown = set(spec) - known
    if unknown:
        raise ServerError(40415, "UnknownField", f"unknown $changeStream field(s): {sorted(unknown)}")
    stages = list(stages or [])
    _check_stages(stages)
    full = str(spec.get("fullDocument", "default"))

    def cursor(after: int, fragment: int | None = None) -> ChangeCursor:
        return ChangeCursor(db, coll, after, full, stages, max_bytes, fragment)

    if "resumeAfter" in spec or "startAfter" in spec:
        token = spec.get("startAfter", spec.get("resumeAfter"))
        t = decode_token(token)
        if t.kind == INVALIDATE and "resumeAfter" in spec:
            raise ServerError(260, "InvalidResumeToken",
                              "cannot resume a change stream after an invalidate event; use startAfter")
        if t.seq + 1 < store.first_seq:
            raise history_lost()
        if t.kind != HWM:
            entry = store.oplog[t.seq - store.first_seq] if store.first_seq <= t.seq <= store.last_seq else None
            probe = cursor(t.seq)
            if entry is None or entry.ts != t.ts or not probe._watches(entry):
                raise _token_not_found(token)
        elif t.seq > store.last_seq:
            return cursor(t.seq)  # accepted silently: the stream waits for that (foreign) position
        if t.kind == INVALIDATE:
            return cursor(t.seq)
        return cursor(t.seq, None if t.fragment is None or t.fragment < 1 else t.fragment - 1)
    if "startAtOperationTime" in spec:
        ts = spec["startAtOperationTime"]
        if store.oplog and (ts.time, ts.inc) < (store.oplog[0].ts.time, store.oplog[0].ts.inc):
            if store.first_seq > 1:
                raise history_lost()
        after = store.first_seq - 1
        for e in store.oplog:
            if (e.ts.time, e.ts.inc) >= (ts.time, ts.inc):
                break
            after = e.seq
        else:
            after = store.last_seq
        return cursor(after)
    return cursor(max(store.first_seq - 1, store.last_seq - lookback))
