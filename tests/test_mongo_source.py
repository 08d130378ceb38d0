"""MongoDB change-stream source and SnapshotLoader, driven partition by partition.

Real pymongo against the wire-level test server (`tests/fixtures/mongo.py`);
fault controls (oplog roll-over, server stop) need the test server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from bson import Regex

from dataflows import metrics
from dataflows.config import Config, ConfigError
from dataflows.connectors.mongo import GENERATION_KEY, mongo_source_from_config
from dataflows.connectors.mongo.source import (
    MongoChangeSource,
    MongoSourceError,
    MongoSourceSettings,
    NamespaceState,
)
from dataflows.dead_letter import DeadLetter, ErrorCode
from dataflows.events import Event
from tests.fixtures.mongo import MongoHandle

Items = list[Any]


def settings(mongo: MongoHandle, **kw: Any) -> MongoSourceSettings:
    base = MongoSourceSettings(uri=mongo.uri, database=mongo.database, collections=("customers",),
                               pipeline="test", max_await_ms=20, server_selection_timeout_ms=2000,  # 0.5s failed under load 10
                               initial_backoff_s=0.05, max_backoff_s=0.2)
    return replace(base, **kw)


def part(s: MongoSourceSettings, state: NamespaceState | None = None) -> Any:
    src = MongoChangeSource(s)
    (ns,) = src.list_parts()
    return src.build_part("mongo_in", ns, state)


def drain(p: Any, until: Callable[[Items], bool], timeout: float = 10.0) -> Items:
    """Call next_batch until `until(items)` holds (or fail at the deadline)."""
    items: Items = []
    deadline = time.monotonic() + timeout
    while not until(items):
        assert time.monotonic() < deadline, f"condition not met; got {items!r}"
        items.extend(p.next_batch())
    return items


def data_events(items: Items) -> list[Event]:
    return [i for i in items if isinstance(i, Event) and i.op != "generation"]


def has_marker(items: Items) -> bool:
    return any(isinstance(i, Event) and i.op == "generation" for i in items)


def test_first_start_snapshots_then_streams(mongo: MongoHandle) -> None:
    coll = mongo.db().customers
    coll.insert_many([{"_id": f"c{i:02d}", "name": f"n{i}"} for i in range(25)])
    p = part(settings(mongo, chunk_size=10))
    items = drain(p, has_marker)
    snap = data_events(items)
    assert [e.key for e in snap] == [f"c{i:02d}" for i in range(25)]
    assert all(e.op == "snapshot" and e.headers == (("sf-generation", b"1"),) for e in snap)
    assert snap[0].event_id == f"snapshot:{mongo.database}.customers:1:c00"
    marker = items[-1]
    assert (marker.key, marker.op, marker.value["generation"], marker.value["complete"]) == (
        GENERATION_KEY, "generation", 1, True)

    coll.insert_one({"_id": "new", "name": "x"})
    coll.update_one({"_id": "c01"}, {"$set": {"name": "changed"}})
    coll.replace_one({"_id": "c02"}, {"name": "replaced"})
    coll.delete_one({"_id": "c03"})
    changes = drain(p, lambda xs: len(xs) >= 4)
    assert [(e.op, e.key) for e in changes] == [
        ("insert", "new"), ("update", "c01"), ("replace", "c02"), ("delete", "c03")]
    assert changes[1].value == {"_id": "c01", "name": "changed"}  # updateLookup
    assert changes[3].value is None
    assert all(e.event_id.startswith(f"mongo:{mongo.database}.customers:") for e in changes)
    assert changes[0].event_time_ms > 1_600_000_000_000
    assert p.snapshot().token is not None
    age = metrics.REGISTRY.get_sample_value(
        "streamforge_resume_token_age_seconds", {"pipeline": "test", "namespace": f"{mongo.database}.customers"})
    assert age is not None and age >= 0
    p.close()


def test_resume_from_state_loses_and_repeats_nothing(mongo: MongoHandle) -> None:
    coll = mongo.db().customers
    coll.insert_one({"_id": "a"})
    p = part(settings(mongo))
    drain(p, has_marker)
    coll.insert_one({"_id": "b"})
    got = drain(p, lambda xs: len(xs) >= 1)
    state = p.snapshot()
    p.close()
    coll.insert_one({"_id": "c"})  # while "stopped"
    coll.delete_one({"_id": "a"})
    p2 = part(settings(mongo), state)
    rest = drain(p2, lambda xs: len(xs) >= 2)
    rest += p2.next_batch()  # and nothing more
    assert [(e.op, e.key) for e in got + rest] == [("insert", "b"), ("insert", "c"), ("delete", "a")]
    p2.close()


def test_idle_collection_advances_its_token(mongo: MongoHandle) -> None:
    db = mongo.db()
    db.customers.insert_one({"_id": "a"})
    p = part(settings(mongo))
    drain(p, has_marker)
    p.next_batch()
    before = p.snapshot().token
    db.other.insert_many([{"_id": i} for i in range(3)])
    deadline = time.monotonic() + 5
    while p.snapshot().token == before:
        assert time.monotonic() < deadline, "post-batch resume token did not advance"
        assert p.next_batch() == []
    p.close()


def test_crash_mid_scan_resumes_after_last_id(mongo: MongoHandle) -> None:
    mongo.db().customers.insert_many([{"_id": i} for i in range(10)])
    p = part(settings(mongo, chunk_size=4))
    first = drain(p, lambda xs: len(xs) >= 4)
    state = p.snapshot()
    p.close()
    assert state.scan is not None and state.scan.last_id == 3
    p2 = part(settings(mongo, chunk_size=4), state)
    rest = drain(p2, has_marker)
    keys = [e.key for e in data_events(first + rest)]
    assert len(keys) == 10 and len(set(keys)) == 10  # each document once
    assert keys[4] == '{"_id": {"$numberInt": "4"}}'  # int _id: reversible key
    assert rest[-1].value["generation"] == 1
    p2.close()


def test_history_lost_resyncs_and_drops_deleted(mongo: MongoHandle) -> None:
    coll = mongo.db().customers
    coll.insert_many([{"_id": f"k{i}"} for i in range(5)])
    p = part(settings(mongo))
    drain(p, has_marker)
    p.next_batch()
    state = p.snapshot()
    p.close()
    coll.delete_one({"_id": "k1"})
    coll.insert_one({"_id": "k9"})
    mongo.roll_oplog()
    p2 = part(settings(mongo), state)
    items = drain(p2, has_marker)
    assert sorted(e.key for e in data_events(items)) == ["k0", "k2", "k3", "k4", "k9"]
    assert items[-1].value["generation"] == 2
    assert "286" in p2.snapshot().resyncs[-1]
    coll.insert_one({"_id": "after"})
    assert [e.key for e in drain(p2, lambda xs: len(xs) >= 1)] == ["after"]
    p2.close()


def test_invalid_token_resyncs_when_needed(mongo: MongoHandle) -> None:
    mongo.db().customers.insert_one({"_id": "a"})
    p = part(settings(mongo), NamespaceState(token={"_data": "not-a-token"}, generation=3))
    items = drain(p, has_marker)
    assert [e.key for e in data_events(items)] == ["a"]
    assert items[-1].value["generation"] == 4 and "rejected" in p.snapshot().resyncs[-1]
    p.close()


@pytest.mark.parametrize("mode", ["never", "initial"])
def test_lost_position_fails_clearly_without_when_needed(mongo: MongoHandle, mode: str) -> None:
    mongo.db().customers.insert_one({"_id": "a"})
    p = part(settings(mongo, snapshot_mode=mode), NamespaceState(token={"_data": "zz"}))
    with pytest.raises(MongoSourceError, match=f"position is lost.*snapshot-mode is '{mode}'.*when_needed"):
        drain(p, lambda xs: False, timeout=5)
    p.close()


def test_never_mode_starts_at_now(mongo: MongoHandle) -> None:
    coll = mongo.db().customers
    coll.insert_one({"_id": "old"})
    p = part(settings(mongo, snapshot_mode="never"))
    assert p.next_batch() == []
    coll.insert_one({"_id": "new"})
    assert [(e.op, e.key) for e in drain(p, lambda xs: len(xs) >= 1)] == [("insert", "new")]
    p.close()


def test_drop_invalidates_and_resyncs_when_following(mongo: MongoHandle) -> None:
    coll = mongo.db().customers
    coll.insert_many([{"_id": "a"}, {"_id": "b"}])
    p = part(settings(mongo, namespace_gone="follow"))
    drain(p, has_marker)
    coll.drop()
    coll.insert_one({"_id": "z"})
    items = drain(p, has_marker)
    assert items[-1].value["generation"] == 2
    assert "dropped" in p.snapshot().resyncs[-1]
    assert "z" in {e.key for e in data_events(items)} and not {"a", "b"} & {e.key for e in data_events(items)}
    p.close()


def test_network_errors_reconnect_without_losing_position(mongo: MongoHandle) -> None:
    server = mongo.require_server()
    coll = mongo.db().customers
    coll.insert_one({"_id": "a"})
    p = part(settings(mongo))
    drain(p, has_marker)
    coll.insert_one({"_id": "b"})
    server.stop()
    for _ in range(3):
        assert p.next_batch() == []  # no exception while the server is gone
    server.start()
    coll.insert_one({"_id": "c"})
    got = drain(p, lambda xs: len(xs) >= 2)
    assert [e.key for e in got] == ["b", "c"]
    p.close()


def test_poison_documents_become_dead_letters(mongo: MongoHandle) -> None:
    coll = mongo.db().customers
    coll.insert_many([{"_id": "ok1"}, {"_id": "rx", "pattern": Regex("^a")}, {"_id": "big", "blob": "x" * 5000}])
    p = part(settings(mongo, max_document_bytes=4096))
    items = drain(p, has_marker)
    dead = {d.key: d for d in items if isinstance(d, DeadLetter)}
    assert dead[b"rx"].error_code == ErrorCode.UNSUPPORTED_TYPE and "pattern" in dead[b"rx"].error_message
    assert dead[b"big"].error_code == ErrorCode.OVERSIZED
    assert dead[b"rx"].event_id == f"snapshot:{mongo.database}.customers:1:rx"
    assert dead[b"big"].payload.startswith(len(dead[b"big"].payload).to_bytes(4, "little"))  # raw BSON kept
    assert [e.key for e in data_events(items)] == ["ok1"]
    coll.insert_one({"_id": "rx2", "code": Regex("b")})
    coll.insert_one({"_id": "ok2"})
    later = drain(p, lambda xs: len(xs) >= 2)
    assert isinstance(later[0], DeadLetter) and later[0].coords["op"] == "insert"
    assert isinstance(later[1], Event) and later[1].key == "ok2"
    p.close()


def test_start_checks_fail_clearly(mongo: MongoHandle) -> None:
    with pytest.raises(MongoSourceError, match="collection 'missing' does not exist"):
        part(settings(mongo, collections=("missing",)))
    with pytest.raises(MongoSourceError, match="cannot reach MongoDB at localhost:1"):
        part(settings(mongo, uri="mongodb://localhost:1/?directConnection=true", server_selection_timeout_ms=200))


def test_config_validation() -> None:
    cfg = Config({"uri": "http://nope", "database": "d", "collections": ["c"]}, "cfg.yaml#source")
    with pytest.raises(ConfigError, match="uri: not a valid MongoDB connection string"):
        mongo_source_from_config(cfg, "p")
    cfg = Config({"uri": "mongodb://h:1", "database": "d", "collections": ["c"], "snapshot-mode": "x"}, "s")
    with pytest.raises(ConfigError, match="snapshot-mode"):
        mongo_source_from_config(cfg, "p")
    ok = Config({"uri": "mongodb://u:secret@h:1", "database": "d", "collections": "a, b", "max-await": "20ms"}, "s")
    src = mongo_source_from_config(ok, "p")
    assert src.list_parts() == ["d.a", "d.b"] and src.settings.max_await_ms == 20
    assert src.settings.hosts() == "h:1"
