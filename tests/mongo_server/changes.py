"""Change streams of the test MongoDB server: resume tokens and event documents.

A resume token is `{"_data": HEX}` like MongoDB's: `82` + the cluster time
(seconds and increment, 8 hex digits each, as in MongoDB's KeyString form,
so `token_time` works for real tokens too) + `2B` + the oplog sequence number
(16 hex digits) + a kind byte (`00` high-water mark, `04` event, `14`
invalidate). A stream resumed from a token returns the entries after its
sequence number; a token whose successor fell out of the oplog answers 286
ChangeStreamHistoryLost, a token that does not parse 260 InvalidResumeToken.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson import Timestamp

from tests.mongo_server.store import OplogEntry, ServerError, Store

__all__ = ["ChangeCursor", "decode_token", "make_token", "open_change_stream"]

HWM, EVENT, INVALIDATE = "00", "04", "14"
_TOKEN = re.compile(r"^82([0-9A-F]{8})([0-9A-F]{8})2B([0-9A-F]{16})(00|04|14)$")


def make_token(ts: Timestamp, seq: int, kind: str) -> dict[str, str]:
    return {"_data": f"82{ts.time:08X}{ts.inc:08X}2B{seq:016X}{kind}"}


def decode_token(token: Any) -> tuple[int, str]:
    """(sequence number, kind) of a token, or ServerError 260."""
    data = token.get("_data") if isinstance(token, Mapping) else None
    m = _TOKEN.match(data) if isinstance(data, str) else None
    if m is None:
        raise ServerError(260, "InvalidResumeToken", f"Failed to parse resume token: {token!r}")
    return int(m.group(3), 16), m.group(4)


def _history_lost() -> ServerError:
    return ServerError(
        286,
        "ChangeStreamHistoryLost",
        "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
        errorLabels=["NonResumableChangeStreamError"],
    )


@dataclass
class ChangeCursor:
    """One open change stream: where it is and what it watches."""

    db: str
    coll: str | None
    after_seq: int
    full_document: str
    invalidated: bool = False

    @property
    def ns(self) -> str:
        return f"{self.db}.{self.coll or '$cmd.aggregate'}"

    def _watches(self, e: OplogEntry) -> bool:
        if e.op == "noop" or e.db != self.db:
            return False
        return self.coll is None or e.coll == self.coll

    def read(self, store: Store, limit: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Up to `limit` events after the position, and the post-batch resume token."""
        if self.after_seq + 1 < store.first_seq:
            raise _history_lost()
        out: list[dict[str, Any]] = []
        start = max(0, self.after_seq + 1 - store.first_seq)
        oplog = store.oplog
        last: OplogEntry | None = None
        for i in range(start, len(oplog)):
            e = oplog[i]
            if len(out) >= limit:
                break
            last = e
            self.after_seq = e.seq
            if not self._watches(e):
                continue
            out.append(self._event(store, e, EVENT))
            if e.op == "drop" and self.coll is not None:
                out.append(self._event(store, e, INVALIDATE))
                self.invalidated = True
                return out, out[-1]["_id"]
        if len(out) >= limit and last is not None and last.seq < store.last_seq:
            return out, out[-1]["_id"]
        return out, make_token(store.last_ts, store.last_seq, HWM)

    def _event(self, store: Store, e: OplogEntry, kind: str) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "_id": make_token(e.ts, e.seq, kind),
            "operationType": "invalidate" if kind == INVALIDATE else e.op,
            "clusterTime": e.ts,
            "wallTime": e.wall,
        }
        if kind == INVALIDATE:
            return ev
        ev["ns"] = {"db": e.db, "coll": e.coll}
        if e.op == "drop":
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


def open_change_stream(store: Store, db: str, coll: str | None, spec: Mapping[str, Any]) -> ChangeCursor:
    """Validate a `$changeStream` stage and position a cursor (under the store lock)."""
    known = {"resumeAfter", "startAfter", "startAtOperationTime", "fullDocument",
             "fullDocumentBeforeChange", "allChangesForCluster", "showExpandedEvents"}
    unknown = set(spec) - known
    if unknown:
        raise ServerError(40415, "UnknownField", f"unknown $changeStream field(s): {sorted(unknown)}")
    full = str(spec.get("fullDocument", "default"))
    if "resumeAfter" in spec or "startAfter" in spec:
        token = spec.get("startAfter", spec.get("resumeAfter"))
        seq, kind = decode_token(token)
        if kind == INVALIDATE and "resumeAfter" in spec:
            raise ServerError(260, "InvalidResumeToken",
                              "cannot resume a change stream after an invalidate event; use startAfter")
        if seq > store.last_seq:
            raise ServerError(260, "InvalidResumeToken", f"resume token {token!r} is from the future")
        cursor = ChangeCursor(db, coll, seq, full)
        if seq + 1 < store.first_seq:
            raise _history_lost()
        return cursor
    if "startAtOperationTime" in spec:
        ts = spec["startAtOperationTime"]
        if store.oplog and (ts.time, ts.inc) < (store.oplog[0].ts.time, store.oplog[0].ts.inc):
            if store.first_seq > 1:
                raise _history_lost()
        after = store.first_seq - 1
        for e in store.oplog:
            if (e.ts.time, e.ts.inc) >= (ts.time, ts.inc):
                break
            after = e.seq
        else:
            after = store.last_seq
        return ChangeCursor(db, coll, after, full)
    return ChangeCursor(db, coll, store.last_seq, full)
