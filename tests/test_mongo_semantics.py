"""MongoDB CDC on real MongoDB semantics (issue 10): what a real replica set would break.

One section per point of the issue. Each test drives real pymongo against the
test server (tests/mongo_server), which answers like MongoDB 6.0-8.0 where
the code depends on it (see tests/mongo_server/changes.py for the sources).
Tests that need a test-server-only control (oplog roll-over, a second server,
a standalone server, the record of read concerns, fresh-stream lookback) say
so via `mongo.require_server()` and skip against STREAMFORGE_TEST_MONGO_URI.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import pytest
from bson import ObjectId, Timestamp

from dataflows import metrics
from dataflows.connectors.mongo.sink import MongoSinkSettings, MongoWriter
from dataflows.connectors.mongo.source import MongoSourceError, NamespaceState
from dataflows.dead_letter import DeadLetter, ErrorCode
from dataflows.events import Event
from dataflows.patterns.materializer import ShardMaterializer
from tests.fixtures.mongo import MongoHandle
from tests.mongo_server import MongoTestServer, make_token
from tests.test_mongo_source import data_events, drain, has_marker, part, settings

MIXED_IDS: list[Any] = [3, 2**60, 2**60 + 1, 1.5, "a", "b", ObjectId("65a000000000000000000001"),
                        ObjectId("65a000000000000000000002"), {"k": 1}, True]


def gauge(name: str, mongo: MongoHandle, coll: str = "customers") -> float | None:
    return metrics.REGISTRY.get_sample_value(name, {"pipeline": "test", "namespace": f"{mongo.database}.{coll}"})


def markers(items: list[Any]) -> list[Event]:
    return [i for i in items if isinstance(i, Event) and i.op == "generation"]


def settle(p: Any, batches: int = 30) -> list[Any]:
    """A fixed number of next_batch calls (for asserting that something does NOT happen)."""
    out: list[Any] = []
    for _ in range(batches):
        out.extend(p.next_batch())
    return out


# -- 1. mixed _id types -------------------------------------------------------------------------

def test_resync_walks_every_id_type(mongo: MongoHandle) -> None:
    coll = mongo.db().customers
    coll.insert_many([{"_id": i, "n": n} for n, i in enumerate(MIXED_IDS)])
    p = part(settings(mongo, chunk_size=2))
    items = drain(p, has_marker)
    assert len(data_events(items)) == len(MIXED_IDS)  # every type, in chunks of 2
    assert len({e.key for e in data_events(items)}) == len(MIXED_IDS)
    p.close()


def test_resync_with_mixed_ids_never_sweeps_live_rows(mongo: MongoHandle) -> None:
    """Change events put every row in the Materializer; a re-sync after a lost position must not tombstone them."""
    coll = mongo.db().customers
    coll.insert_one({"_id": "seed"})
    p = part(settings(mongo, chunk_size=3))
    table = ShardMaterializer("m")
    for e in drain(p, has_marker):  # generation 1
        table.on_item(e)
    coll.insert_many([{"_id": i} for i in MIXED_IDS])
    for e in drain(p, lambda xs: len(xs) >= len(MIXED_IDS)):
        table.on_item(e)
    mongo.roll_oplog()
    tombstones = []
    for e in drain(p, has_marker):
        changes, _ = table.on_item(e)
        tombstones += [c.key for c in changes if c.kind == "tombstone"]
    assert tombstones == []
    assert len(table.rows) == len(MIXED_IDS) + 1
    p.close()


def test_mirror_reconcile_keeps_every_id_type(mongo: MongoHandle) -> None:
    db = mongo.db()
    db.customers.insert_many([{"_id": i} for i in MIXED_IDS])
    db.customers_view.insert_many([{"_id": i} for i in MIXED_IDS] + [{"_id": "gone"}, {"_id": 2**60 + 2}])
    s = MongoSinkSettings(uri=mongo.uri, database=mongo.database, collection="customers_view", pipeline="test",
                          mirror_of=(mongo.uri, mongo.database, "customers"))
    w = MongoWriter(s)
    assert w.reconcile() == 2
    assert db.customers_view.count_documents({}) == len(MIXED_IDS)
    w.close()


# -- 5. renames and drops never wipe the target by default -------------------------------------

def _rename(mongo: MongoHandle, src: str, dst: str, drop_target: bool = False) -> None:
    mongo.client().admin.command("renameCollection", f"{mongo.database}.{src}", to=f"{mongo.database}.{dst}",
                                 dropTarget=drop_target)


@pytest.mark.parametrize("how", ["rename_away", "rename_onto", "drop_database", "drop"])
def test_namespace_gone_halts_without_a_sweep(mongo: MongoHandle, how: str) -> None:
    db = mongo.db()
    db.customers.insert_many([{"_id": "a"}, {"_id": "b"}])
    db.other.insert_one({"_id": "o"})
    p = part(settings(mongo))
    drain(p, has_marker)
    if how == "rename_away":
        _rename(mongo, "customers", "customers_old")
    elif how == "rename_onto":
        _rename(mongo, "other", "customers", drop_target=True)
    elif how == "drop_database":
        mongo.client().drop_database(mongo.database)
    else:
        db.customers.drop()
    items = settle(p)
    assert markers(items) == [] and data_events(items) == []  # nothing that could sweep or overwrite
    assert p.snapshot().halted is not None and "source.namespace-gone" in p.snapshot().halted
    assert gauge("streamforge_mongo_namespace_gone", mongo) == 1
    p.close()
    p2 = part(settings(mongo), p.snapshot())  # a restart stays halted
    assert markers(settle(p2, 5)) == []
    p2.close()


def test_swap_is_followed_when_configured(mongo: MongoHandle) -> None:
    db = mongo.db()
    db.customers.insert_many([{"_id": "a"}, {"_id": "b"}])
    p = part(settings(mongo, namespace_gone="follow"))
    drain(p, has_marker)
    _rename(mongo, "customers", "customers_old")
    assert markers(settle(p, 10)) == []  # absent: wait, never a (complete) empty re-sync
    assert gauge("streamforge_mongo_namespace_gone", mongo) == 1
    db.customers_new.insert_many([{"_id": "b"}, {"_id": "c"}])
    _rename(mongo, "customers_new", "customers")
    items = drain(p, has_marker)
    assert sorted(e.key for e in data_events(items)) == ["b", "c"]
    assert markers(items)[-1].value["complete"] is True
    assert gauge("streamforge_mongo_namespace_gone", mongo) == 0
    p.close()


def test_mirror_never_reconciles_against_an_absent_source(mongo: MongoHandle) -> None:
    db = mongo.db()
    db.customers_view.insert_many([{"_id": "a"}, {"_id": "b"}])
    s = MongoSinkSettings(uri=mongo.uri, database=mongo.database, collection="customers_view", pipeline="test",
                          mirror_of=(mongo.uri, mongo.database, "customers"))
    w = MongoWriter(s)
    marker = Event(key="__generation__", value={"generation": 2, "complete": True}, event_time_ms=1,
                   event_id="g", source="mongo:x", op="generation")
    assert w.write([marker]) == []
    assert db.customers_view.count_documents({}) == 2
    w.close()


# -- 2. corrupt or foreign resume tokens --------------------------------------------------------

@pytest.mark.parametrize("token", [{"_data": "not-a-token"}, {"_data": 7}, {"nope": 1}])
def test_rejected_token_resyncs_when_needed(mongo: MongoHandle, token: dict[str, Any]) -> None:
    mongo.db().customers.insert_one({"_id": "a"})
    p = part(settings(mongo), NamespaceState(token=token, generation=3))
    items = drain(p, has_marker)
    assert [e.key for e in data_events(items)] == ["a"]
    assert items[-1].value["generation"] == 4 and "rejected" in p.snapshot().resyncs[-1]
    p.close()


def test_token_not_in_this_oplog_resyncs(mongo: MongoHandle) -> None:
    server = mongo.require_server()  # builds an event token of the test server's layout
    mongo.db().customers.insert_one({"_id": "a"})
    foreign = make_token(Timestamp(1_700_000_000, 5), server.store.last_seq + 10, "04")
    p = part(settings(mongo), NamespaceState(token=foreign, generation=1))
    items = drain(p, has_marker)
    assert [e.key for e in data_events(items)] == ["a"] and "280" in p.snapshot().resyncs[-1]
    p.close()


def test_rejected_token_fails_clearly_when_the_server_refuses_everything(mongo: MongoHandle) -> None:
    server = mongo.require_server()
    mongo.db().customers.insert_one({"_id": "a"})
    p = part(settings(mongo), NamespaceState(token={"_data": "zz"}, generation=1))
    server.fail_command("aggregate", times=100, code=13, errmsg="not authorized on sf_test to execute command")
    with pytest.raises(MongoSourceError, match="cannot open a change stream at all.*not authorized"):
        drain(p, lambda xs: False, timeout=5)
    p.close()


# -- 6. a re-sync longer than the oplog window -------------------------------------------------

def test_resync_longer_than_the_oplog_window_halts_loudly(mongo: MongoHandle) -> None:
    mongo.require_server()  # rolls the oplog mid-scan
    mongo.db().customers.insert_many([{"_id": i} for i in range(60)])
    p = part(settings(mongo, chunk_size=10))
    rolled = 0
    for _ in range(400):
        p.next_batch()
        st = p.snapshot()
        if st.halted is not None:
            break
        if st.scan is not None and st.scan.docs >= 20 and rolled < 5 and st.scan.generation > rolled:
            mongo.roll_oplog()  # every re-sync outlives the oplog window
            rolled = st.scan.generation
    st = p.snapshot()
    assert st.halted is not None and "oplog" in st.halted and "snapshot-max-docs-per-second" in st.halted
    assert gauge("streamforge_mongo_resync_exceeds_oplog_window", mongo) == 1
    assert st.generation <= 2  # gave up after a retry, not generation after generation
    p.close()


def test_resync_start_lost_mid_scan_ends_the_scan_early(mongo: MongoHandle) -> None:
    mongo.require_server()  # rolls the oplog mid-scan
    mongo.db().customers.insert_many([{"_id": i} for i in range(60)])
    p = part(settings(mongo, chunk_size=10, oplog_probe_interval_s=0.0))
    first = drain(p, lambda xs: len(xs) >= 20)
    mongo.roll_oplog()
    rest = drain(p, has_marker)
    assert [m.value["generation"] for m in markers(first + rest)] == [2]  # generation 1 never claimed complete
    assert len({e.key for e in data_events(rest) if e.headers == (("sf-generation", b"2"),)}) == 60
    drain(p, lambda xs: p.snapshot().lost_resyncs == 0)  # its start resumed: back within the window
    p.close()


# -- 3. restored or re-pointed sources ----------------------------------------------------------

def test_state_from_another_cluster_resyncs(mongo: MongoHandle) -> None:
    mongo.require_server()  # a second server
    other = MongoTestServer().start()
    try:
        from pymongo import MongoClient

        with MongoClient(other.uri) as c:
            c[mongo.database].customers.insert_one({"_id": "elsewhere"})
            for i in range(30):
                c[mongo.database].noise.insert_one({"_id": i})
        p = part(replace(settings(mongo), uri=other.uri))
        drain(p, has_marker)
        foreign = p.snapshot()
        p.close()
        mongo.db().customers.insert_one({"_id": "here"})
        p2 = part(settings(mongo), foreign)
        items = drain(p2, has_marker)
        assert [e.key for e in data_events(items)] == ["here"]
        assert "another" in p2.snapshot().resyncs[-1]
        p2.close()
    finally:
        other.stop()


def test_token_ahead_of_the_source_resyncs(mongo: MongoHandle) -> None:
    server = mongo.require_server()  # a high-water-mark token of the test server's layout
    mongo.db().customers.insert_one({"_id": "a"})
    p = part(settings(mongo))
    drain(p, has_marker)
    state = p.snapshot()
    p.close()
    state.token = make_token(Timestamp(4_000_000_000, 1), server.store.last_seq + 5, "00")  # restored source
    p2 = part(settings(mongo), state)
    items = drain(p2, has_marker)
    assert [e.key for e in data_events(items)] == ["a"] and "ahead" in p2.snapshot().resyncs[-1]
    p2.close()


# -- 4. change events over 16 MiB -----------------------------------------------------------------

def _big_update(mongo: MongoHandle) -> None:
    coll = mongo.db().customers
    coll.update_one({"_id": "big"}, {"$set": {"b": "y" * (6 << 20)}})  # fullDocument 15 MiB + 6 MiB update


def test_large_update_fits_without_update_description(mongo: MongoHandle) -> None:
    mongo.db().customers.insert_one({"_id": "big", "a": "x" * (9 << 20)})
    p = part(settings(mongo))
    drain(p, has_marker)
    _big_update(mongo)
    (ev,) = drain(p, lambda xs: len(xs) >= 1)
    assert ev.op == "update" and len(ev.value["b"]) == 6 << 20
    p.close()


def test_split_large_events_are_reassembled(mongo: MongoHandle) -> None:
    mongo.db().customers.insert_one({"_id": "big", "a": "x" * (9 << 20)})
    p = part(settings(mongo, split_large_events=True, drop_update_description=False))
    drain(p, has_marker)
    _big_update(mongo)
    mongo.db().customers.insert_one({"_id": "after"})
    got = drain(p, lambda xs: len(xs) >= 2)
    assert [(e.op, e.key) for e in got] == [("update", "big"), ("insert", "after")]
    assert len(got[0].value["b"]) == 6 << 20
    p.close()


def _near_limit_insert(mongo: MongoHandle) -> None:
    # a 16 MiB document is legal; its insert event (+ _id, ns, documentKey...) is not
    mongo.db().customers.insert_one({"_id": "huge", "a": "x" * ((16 << 20) - 40)})
    mongo.db().customers.insert_one({"_id": "next"})


def test_oversized_event_fails_with_a_clear_message(mongo: MongoHandle) -> None:
    mongo.db().create_collection("customers")
    p = part(settings(mongo))
    drain(p, has_marker)
    _near_limit_insert(mongo)
    with pytest.raises(MongoSourceError, match="larger than 16 MiB.*source.oversize-handling"):
        drain(p, lambda xs: False, timeout=10)
    p.close()


def test_oversized_event_skips_into_the_dlq(mongo: MongoHandle) -> None:
    mongo.db().create_collection("customers")
    p = part(settings(mongo, oversize_handling="skip"))
    drain(p, has_marker)
    _near_limit_insert(mongo)
    got = drain(p, lambda xs: len(xs) >= 2)
    dead, after = got
    assert isinstance(dead, DeadLetter) and dead.error_code == ErrorCode.OVERSIZED
    assert dead.key == b"huge" and dead.coords["resume_token"] and dead.coords["op"] == "insert"
    assert isinstance(after, Event) and after.key == "next"
    p.close()


# -- 7. re-sync reads with majority read concern after the start token ------------------------------

def test_resync_scan_reads_majority_after_its_start_token(mongo: MongoHandle) -> None:
    server = mongo.require_server()  # inspects the read concern the server received
    mongo.db().customers.insert_many([{"_id": i} for i in range(5)])
    uri = mongo.uri + "&readPreference=secondaryPreferred"
    p = part(settings(mongo, uri=uri, chunk_size=2))
    server.reads.clear()
    drain(p, has_marker)
    scans = [r for r in server.reads if r["cmd"] == "find"]
    assert scans
    start = p.snapshot().token
    for r in scans:
        rc = r["readConcern"]
        assert rc.get("level") == "majority"
        assert (rc["afterClusterTime"].time * 1000) >= (int(start["_data"][2:10], 16) * 1000)
    p.close()


# -- 8. smaller ones --------------------------------------------------------------------------------

def test_open_stream_capped_position_lost_resyncs(mongo: MongoHandle) -> None:
    server = mongo.require_server()
    server.cursor_loss_code = 136
    coll = mongo.db().customers
    coll.insert_one({"_id": "a"})
    p = part(settings(mongo))
    drain(p, has_marker)
    p.next_batch()  # the stream is open
    coll.insert_one({"_id": "b"})
    server.roll_oplog()
    items = drain(p, has_marker)
    assert sorted(e.key for e in data_events(items)) == ["a", "b"] and "136" in p.snapshot().resyncs[-1]
    p.close()


def test_fresh_stream_with_events_in_its_first_batch(mongo: MongoHandle) -> None:
    server = mongo.require_server()
    mongo.db().customers.insert_many([{"_id": i} for i in range(3)])
    server.fresh_stream_lookback = 3  # the first batch carries events: pymongo's resume_token stays None
    p = part(settings(mongo))
    items = drain(p, has_marker)
    assert len(data_events(items)) == 3
    mongo.db().customers.insert_one({"_id": "later"})
    assert "later" in [e.key for e in drain(p, lambda xs: any(e.key == "later" for e in xs))]
    p.close()


def test_no_private_pymongo_api(mongo: MongoHandle) -> None:
    from dataflows.connectors.mongo import source as mongo_source

    assert "._cursor" not in inspect.getsource(mongo_source)  # ChangeStream._cursor._has_next() was used
    coll = mongo.db().customers
    coll.insert_one({"_id": "a"})
    p = part(settings(mongo))
    drain(p, has_marker)
    coll.insert_many([{"_id": "x"}, {"_id": "y"}])
    assert [e.key for e in drain(p, lambda xs: len(xs) >= 2)] == ["x", "y"]
    p.close()


def test_standalone_server_fails_at_start_with_its_own_message(mongo: MongoHandle) -> None:
    server = mongo.require_server()
    server.standalone = True
    mongo.db().customers.insert_one({"_id": "a"})
    with pytest.raises(MongoSourceError, match="standalone.*replica set.*40573"):
        p = part(settings(mongo))
        drain(p, lambda xs: False, timeout=5)


def test_new_source_keys_are_validated() -> None:
    from dataflows.config import Config, ConfigError
    from dataflows.connectors.mongo import mongo_source_from_config

    base = {"uri": "mongodb://h:1", "database": "d", "collections": ["c"]}
    for key, bad in (("namespace-gone", "wipe"), ("oversize-handling", "truncate")):
        with pytest.raises(ConfigError, match=key):
            mongo_source_from_config(Config({**base, key: bad}, "s"), "p")
    s = mongo_source_from_config(Config({**base, "namespace-gone": "follow", "split-large-events": True,
                                         "oversize-handling": "skip"}, "s"), "p").settings
    assert (s.namespace_gone, s.split_large_events, s.oversize_handling, s.drop_update_description) == (
        "follow", True, "skip", True)
