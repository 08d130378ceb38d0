"""The wire-level test MongoDB server answers real pymongo like a replica-set primary.

These pin the behaviours StreamForge relies on; against a real replica set
(STREAMFORGE_TEST_MONGO_URI) the same assertions hold, except the fault
controls, which skip there.
"""

from __future__ import annotations

import pytest
from pymongo import DeleteOne, ReplaceOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from tests.fixtures.mongo import MongoHandle


def test_hello_is_replica_set_primary(mongo: MongoHandle) -> None:
    hello = mongo.client().admin.command("hello")
    assert hello["isWritablePrimary"] and hello["setName"] and hello["maxWireVersion"] >= 17


def test_crud_find_sort_limit_getmore(mongo: MongoHandle) -> None:
    coll = mongo.db().people
    coll.insert_many([{"_id": i, "n": i % 3} for i in range(250)])
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"_id": 5})
    assert [d["_id"] for d in coll.find({"_id": {"$gt": 245}}).sort("_id", 1)] == [246, 247, 248, 249]
    assert [d["_id"] for d in coll.find({"_id": {"$in": [3, 1, 999]}}).sort("_id", -1)] == [3, 1]
    assert len(list(coll.find({}, batch_size=7))) == 250  # many getMores
    assert [d["_id"] for d in coll.find({"n": 2}).sort("_id", 1).limit(3)] == [2, 5, 8]
    coll.update_one({"_id": 1}, {"$set": {"a.b": 1}, "$inc": {"n": 10}, "$unset": {"x": ""}})
    assert coll.find_one({"_id": 1}) == {"_id": 1, "n": 11, "a": {"b": 1}}
    coll.update_one({"_id": "new"}, {"$set": {"v": 1}}, upsert=True)
    coll.replace_one({"_id": 2}, {"r": True})
    assert coll.find_one({"_id": "new"}) == {"_id": "new", "v": 1}
    assert coll.find_one({"_id": 2}) == {"_id": 2, "r": True}
    assert coll.delete_many({"n": 0}).deleted_count == 84
    assert coll.count_documents({}) == 250 - 84 + 1


def test_guarded_upsert_on_existing_id_is_duplicate_key(mongo: MongoHandle) -> None:
    coll = mongo.db().t
    coll.insert_one({"_id": "k", "version": 5})
    flt = {"_id": "k", "$or": [{"version": {"$lt": 3}}, {"version": {"$exists": False}}]}
    with pytest.raises(BulkWriteError) as info:
        coll.bulk_write([ReplaceOne(flt, {"version": 3}, upsert=True), DeleteOne({"_id": "zz"})], ordered=False)
    (err,) = info.value.details["writeErrors"]
    assert err["code"] == 11000 and err["keyPattern"] == {"_id": 1}


def test_change_stream_resume_and_positions(mongo: MongoHandle) -> None:
    coll = mongo.db().cs
    with coll.watch(max_await_time_ms=50) as s:
        start = s.resume_token
        coll.insert_one({"_id": 1})
        first = s.try_next()
        op_time = first["clusterTime"]
        coll.update_one({"_id": 1}, {"$set": {"a": 1}})
        coll.delete_one({"_id": 1})
        assert s.try_next()["operationType"] == "update" and s.try_next()["operationType"] == "delete"
    with coll.watch(resume_after=start, full_document="updateLookup") as s:
        ops = [s.try_next() for _ in range(3)]
        assert [c["operationType"] for c in ops] == ["insert", "update", "delete"]
        assert ops[1]["fullDocument"] is None  # looked up after the delete
        assert ops[1]["updateDescription"]["updatedFields"] == {"a": 1}
    with coll.watch(start_at_operation_time=op_time) as s:
        assert s.try_next()["documentKey"] == {"_id": 1}
    with coll.watch(resume_after=first["_id"]) as s:
        assert s.try_next()["operationType"] == "update"


def test_drop_invalidates_and_start_after_continues(mongo: MongoHandle) -> None:
    coll = mongo.db().dropme
    coll.insert_one({"_id": 1})
    with coll.watch(max_await_time_ms=50) as s:
        coll.drop()
        assert s.try_next()["operationType"] == "drop"
        inv = s.try_next()
        assert inv["operationType"] == "invalidate" and not s.alive
    coll.insert_one({"_id": 2})
    with pytest.raises(OperationFailure):
        with coll.watch(resume_after=inv["_id"]) as s:
            s.try_next()
    with coll.watch(start_after=inv["_id"]) as s:
        assert s.try_next()["documentKey"] == {"_id": 2}


def test_lost_and_malformed_tokens(mongo: MongoHandle) -> None:
    coll = mongo.db().lost
    with coll.watch() as s:
        token = s.resume_token
    coll.insert_one({"_id": 1})
    with pytest.raises(OperationFailure) as bad:
        with coll.watch(resume_after={"_data": "00zz"}) as s:
            s.try_next()
    assert bad.value.code == 260
    mongo.roll_oplog()
    with pytest.raises(OperationFailure) as lost:
        with coll.watch(resume_after=token) as s:
            s.try_next()
    assert lost.value.code == 286


def test_network_errors_and_restart_keep_data(mongo: MongoHandle) -> None:
    server = mongo.require_server()
    coll = mongo.client(serverSelectionTimeoutMS=2000).sf.net
    coll.insert_one({"_id": 1})
    server.stop()
    with pytest.raises(Exception):  # noqa: B017 - AutoReconnect or ServerSelectionTimeoutError
        coll.insert_one({"_id": 2})
    server.start()
    coll.insert_one({"_id": 3})
    assert [d["_id"] for d in coll.find()] == [1, 3]
