"""MongoDB sink: bulk upserts/deletes, version guard, retries, dead letters.

Real pymongo against the wire-level test server; injected failures
(`fail_command`, a small `maxBsonObjectSize`) need the test server.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
from bson import ObjectId

from dataflows.config import Config
from dataflows.connectors.dlq import JsonlDeadLetterAppender
from dataflows.connectors.mongo import mongo_sink_from_config
from dataflows.connectors.mongo.codec import encode_key
from dataflows.connectors.mongo.sink import MongoSinkSettings, MongoWriter
from dataflows.dead_letter import ErrorCode
from dataflows.events import Event
from dataflows.retry import RetryPolicy
from tests.fixtures.mongo import MongoHandle


@dataclass(frozen=True)
class Change:
    """Shaped like the Materializer's TableChange."""

    kind: str
    key: str
    value: Any
    event_id: str = "e"
    event_time_ms: int = 0


def up(key: Any, **doc: Any) -> Change:
    return Change("upsert", encode_key(key), {"_id": key, **doc}, f"ev-{key}-{doc}")


def tomb(key: Any) -> Change:
    return Change("tombstone", encode_key(key), None)


def writer(mongo: MongoHandle, **kw: Any) -> MongoWriter:
    s = MongoSinkSettings(uri=mongo.uri, database=mongo.database, collection="target", pipeline="test",
                          retry=RetryPolicy(3, 0.01, 0.02, 2.0, 0.0))
    return MongoWriter(replace(s, **kw), sleep=lambda _: None)


def target(mongo: MongoHandle) -> dict[Any, Any]:
    return {d["_id"]: d for d in mongo.db().target.find()}


def test_upserts_and_tombstones_last_change_per_key_wins(mongo: MongoHandle) -> None:
    oid = ObjectId()
    w = writer(mongo)
    assert w.write([up("a", n=1), up(oid, n=2), up(3, n=3), up("a", n=4), tomb(3)]) == []
    assert target(mongo) == {"a": {"_id": "a", "n": 4}, oid: {"_id": oid, "n": 2}}
    assert w.write([tomb(oid), tomb("missing"), up("a", n=5)]) == []
    assert target(mongo) == {"a": {"_id": "a", "n": 5}}
    ev = Event(key="e1", value={"x": 1}, event_time_ms=0, event_id="x", source="s", op="insert")
    assert w.write([ev, Event(key="a", value=None, event_time_ms=0, event_id="y", source="s", op="delete")]) == []
    assert target(mongo) == {"e1": {"_id": "e1", "x": 1}}
    w.close()


def test_version_guard_never_overwrites_newer(mongo: MongoHandle) -> None:
    w = writer(mongo, version_field="version")
    assert w.write([up("k", version=5, v="five")]) == []
    assert w.write([up("k", version=3, v="three")]) == []  # replayed older version
    assert target(mongo)["k"]["v"] == "five" and w.stats.stale_skipped == 1
    assert w.write([up("k", version=5, v="five again")]) == []  # same version: also kept
    assert target(mongo)["k"]["v"] == "five"
    assert w.write([up("k", version=6, v="six")]) == []
    assert target(mongo)["k"]["v"] == "six"
    mongo.db().target.insert_one({"_id": "legacy", "v": "no version"})
    assert w.write([up("legacy", version=1, v="one")]) == []  # missing version: overwritten
    assert target(mongo)["legacy"]["v"] == "one"
    mongo.db().target.insert_one({"_id": "odd", "version": "abc"})
    (dl,) = w.write([up("odd", version=2)])  # incomparable stored version: dead letter
    assert dl.error_code == ErrorCode.SINK_WRITE and "cannot be compared" in dl.error_message
    assert w.write([up("nov", v="no version field")]) == []  # unguarded upsert
    assert target(mongo)["nov"]["v"] == "no version field"
    w.close()


def test_transient_failures_are_retried(mongo: MongoHandle) -> None:
    server = mongo.require_server()
    server.fail_command("update", times=2, code=91)  # ShutdownInProgress, no retryable label
    w = writer(mongo)
    assert w.write([up("a", n=1), up("b", n=2)]) == []
    assert set(target(mongo)) == {"a", "b"} and w.stats.retries == 4
    server.fail_command("update", times=1, close_connection=True)  # network error
    assert w.write([up("c", n=1)]) == []
    assert "c" in target(mongo)
    w.close()


def test_exhausted_retries_and_permanent_errors_go_to_dlq(mongo: MongoHandle, tmp_path: Any) -> None:
    server = mongo.require_server()
    server.fail_command("update", times=10, code=91)
    w = writer(mongo)
    dead = w.write([up("a", n=1)])
    assert len(dead) == 1 and dead[0].attempts == 3 and dead[0].error_code == ErrorCode.SINK_WRITE
    assert dead[0].key == b"a" and b'"n":1' in dead[0].payload and dead[0].stage == "mongo-sink"
    server.clear_failpoints()
    server.handler.max_bson_size = 2048  # the server refuses larger documents: BSONObjectTooLarge
    w2 = writer(mongo)
    dead = w2.write([up("ok", n=1), up("huge", blob="x" * 4096), up("ok2", n=2)])
    assert [d.key for d in dead] == [b"huge"] and "BSONObj size" in dead[0].error_message
    assert dead[0].attempts == 1
    bad = w2.write([up("ok3", n=1), up("bad", x=object())])  # pymongo cannot encode it: InvalidDocument
    assert [d.key for d in bad] == [b"bad"] and bad[0].exception_class == "InvalidDocument"
    assert set(target(mongo)) == {"ok", "ok2", "ok3"}
    sink = JsonlDeadLetterAppender(tmp_path / "dlq.jsonl")
    sink(dead)
    assert [d.key for d in sink.read()] == [b"huge"]
    w.close()
    w2.close()


def test_sink_from_config(mongo: MongoHandle, tmp_path: Any) -> None:
    sink_cfg = {"uri": mongo.uri, "database": "d", "collection": "c", "version-field": "version",
                "retry": {"max-attempts": 7, "initial-backoff": "10ms"}}
    cfg = Config({"sink": sink_cfg, "dlq": {"path": str(tmp_path / "x")}}, "s").section("sink")
    sink = mongo_sink_from_config(cfg, "p")
    assert sink.settings.retry.max_attempts == 7 and sink.settings.version_field == "version"
    with pytest.raises(ValueError, match="uri"):
        mongo_sink_from_config(Config({"uri": "mongodb://", "database": "d", "collection": "c",
                                       "dlq": {"path": "x"}}, "s"), "p")


def test_mirror_reconcile_on_generation_marker(mongo: MongoHandle) -> None:
    db = mongo.db()
    db.src.insert_many([{"_id": "keep"}, {"_id": 7}])
    db.target.insert_many([{"_id": "keep"}, {"_id": 7}, {"_id": "stale"}, {"_id": ObjectId()}])
    marker = Event(key="__generation__", value={"generation": 2, "complete": True}, event_time_ms=0,
                   event_id="m", source="mongo:x", op="generation")
    plain = writer(mongo)
    assert plain.write([marker, up("new", n=1)]) == []  # not a mirror: the marker is ignored
    assert len(target(mongo)) == 5
    mirror = writer(mongo, mirror_of=(mongo.uri, mongo.database, "src"))
    assert mirror.write([up("new2", n=1), marker]) == []
    assert set(target(mongo)) == {"keep", 7}  # absent from the source: removed after the batch
    plain.close()
    mirror.close()
