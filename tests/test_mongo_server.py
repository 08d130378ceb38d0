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

# What 6.0-8.0 answer to a resume token that does not parse (resume_token.cpp); 260 is older servers.
MALFORMED_TOKEN_CODES = {9, 260, 40647, 40648, 40649, 50811}


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
    assert bad.value.code in MALFORMED_TOKEN_CODES  # 9 FailedToParse on 6.0-8.0, not 260
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


# -- behaviours a real replica set has and StreamForge depends on (issue 10) ---------------------------

def test_int64_ids_compare_exactly(mongo: MongoHandle) -> None:
    coll = mongo.db().big
    coll.insert_many([{"_id": 2**60}, {"_id": 2**60 + 1}])  # distinct: no duplicate key
    assert [d["_id"] for d in coll.find({"_id": {"$gt": 2**60}})] == [2**60 + 1]
    assert coll.count_documents({"_id": {"$in": [2**60 + 1]}}) == 1


def test_id_order_is_bson_type_order_and_gt_is_type_bracketed(mongo: MongoHandle) -> None:
    from bson import ObjectId

    coll = mongo.db().mixed
    oid = ObjectId()
    coll.insert_many([{"_id": "b"}, {"_id": oid}, {"_id": 2}, {"_id": "a"}, {"_id": 1.5}])
    assert [d["_id"] for d in coll.find().sort("_id", 1)] == [1.5, 2, "a", "b", oid]
    assert [d["_id"] for d in coll.find({"_id": {"$gt": 1.5}}).sort("_id", 1)] == [2]  # numbers only
    assert [d["_id"] for d in coll.find({"_id": {"$lt": "b"}}).sort("_id", 1)] == ["a"]  # strings only
    if mongo.server is not None:  # pymongo itself refuses min() without hint; the server does too (51173)
        with pytest.raises(OperationFailure):
            coll.database.command("find", coll.name, min={"_id": 2})
    walk = coll.find({}, sort=[("_id", 1)], hint=[("_id", 1)], min={"_id": 2})  # index bounds span types
    assert [d["_id"] for d in walk] == [2, "a", "b", oid]


def test_rename_and_drop_database_events_invalidate(mongo: MongoHandle) -> None:
    client = mongo.client()
    db = client[mongo.database]
    db.src.insert_one({"_id": 1})
    db.other.insert_one({"_id": 2})
    with db.src.watch(max_await_time_ms=50) as away, db.dst.watch(max_await_time_ms=50) as onto:
        client.admin.command("renameCollection", f"{db.name}.src", to=f"{db.name}.dst")
        ev = away.next()
        assert ev["operationType"] == "rename" and ev["to"] == {"db": db.name, "coll": "dst"}
        assert away.next()["operationType"] == "invalidate"
        assert onto.next()["operationType"] == "invalidate"  # renamed onto the watched namespace
    with pytest.raises(OperationFailure) as exists:
        client.admin.command("renameCollection", f"{db.name}.other", to=f"{db.name}.dst")
    assert exists.value.code == 48  # NamespaceExists without dropTarget
    client.admin.command("renameCollection", f"{db.name}.other", to=f"{db.name}.dst", dropTarget=True)
    assert [d["_id"] for d in db.dst.find()] == [2]
    with db.dst.watch(max_await_time_ms=50) as coll_stream, db.watch(max_await_time_ms=50) as db_stream:
        client.drop_database(db.name)
        assert [coll_stream.next()["operationType"] for _ in range(2)] == ["drop", "invalidate"]
        ops = [db_stream.next()["operationType"] for _ in range(3)]
        assert ops[-2:] == ["dropDatabase", "invalidate"] and ops[0] == "drop"


def test_collection_uuid_is_kept_by_rename(mongo: MongoHandle) -> None:
    client = mongo.client()
    db = client[mongo.database]
    db.create_collection("u1")
    (info,) = db.list_collections(filter={"name": "u1"})
    client.admin.command("renameCollection", f"{db.name}.u1", to=f"{db.name}.u2")
    (moved,) = db.list_collections(filter={"name": "u2"})
    assert moved["info"]["uuid"] == info["info"]["uuid"]
    db.create_collection("u1")
    (fresh,) = db.list_collections(filter={"name": "u1"})
    assert fresh["info"]["uuid"] != info["info"]["uuid"]


def test_events_over_16mib_fail_or_split(mongo: MongoHandle) -> None:
    coll = mongo.db().large
    coll.insert_one({"_id": 1, "a": "x" * (9 << 20)})
    with coll.watch(full_document="updateLookup", max_await_time_ms=50) as s:
        start = s.resume_token
        coll.update_one({"_id": 1}, {"$set": {"b": "y" * (6 << 20)}})  # fullDocument 15 MiB + update 6 MiB
        with pytest.raises(OperationFailure) as too_large:
            s.next()
    assert too_large.value.code == 10334  # BSONObjectTooLarge
    split = [{"$changeStreamSplitLargeEvent": {}}]
    with coll.watch(split, full_document="updateLookup", resume_after=start, max_await_time_ms=50) as s:
        first, second = s.next(), s.next()
    assert first["splitEvent"] == {"fragment": 1, "of": 2} and second["splitEvent"] == {"fragment": 2, "of": 2}
    assert {"fullDocument", "updateDescription"} <= set(first) | set(second)
    with coll.watch(split, full_document="updateLookup", resume_after=first["_id"], max_await_time_ms=50) as s:
        assert s.next()["splitEvent"]["fragment"] == 2  # resumes between fragments
    slim = [{"$project": {"updateDescription": 0}}]
    with coll.watch(slim, full_document="updateLookup", resume_after=start, max_await_time_ms=50) as s:
        ev = s.next()
    assert "updateDescription" not in ev and len(ev["fullDocument"]["b"]) == 6 << 20
    with pytest.raises(OperationFailure):  # the split stage must be the last one
        coll.watch(split + slim)


def test_match_after_change_stream(mongo: MongoHandle) -> None:
    coll = mongo.db().m
    with coll.watch([{"$match": {"operationType": {"$in": ["delete"]}}}], max_await_time_ms=50) as s:
        coll.insert_one({"_id": 1})
        coll.delete_one({"_id": 1})
        assert s.next()["operationType"] == "delete"


def test_majority_read_concern_after_cluster_time_is_accepted(mongo: MongoHandle) -> None:
    from pymongo.read_concern import ReadConcern

    client = mongo.client()
    coll = client[mongo.database].get_collection("rc", read_concern=ReadConcern("majority"))
    coll.insert_one({"_id": 1})
    with client.start_session(causal_consistency=True) as session:
        op_time = client.admin.command("ping", session=session)["operationTime"]
        session.advance_operation_time(op_time)
        assert [d["_id"] for d in coll.find({}, session=session)] == [1]
    if mongo.server is not None:
        rc = mongo.server.reads[-1]["readConcern"]
        assert rc["level"] == "majority" and rc["afterClusterTime"] == op_time


def test_foreign_tokens(mongo: MongoHandle) -> None:
    """An event token this oplog never had: 280; an idle high-water-mark token: accepted silently."""
    server = mongo.require_server()  # test-server token layout: the foreign tokens are built, not copied
    from bson import Timestamp

    from tests.mongo_server import make_token

    coll = mongo.db().foreign
    coll.insert_one({"_id": 1})
    future = server.store.last_seq + 50
    with pytest.raises(OperationFailure) as not_found:
        coll.watch(resume_after=make_token(Timestamp(2**31, 1), future, "04"))
    assert not_found.value.code == 280 and not_found.value.has_error_label("NonResumableChangeStreamError")
    with coll.watch(resume_after=make_token(Timestamp(2**31, 1), future, "00"), max_await_time_ms=20) as s:
        coll.insert_one({"_id": 2})
        assert s.try_next() is None  # silently waits for a position this cluster has not reached


def test_open_stream_overtaken_by_the_oplog(mongo: MongoHandle) -> None:
    server = mongo.require_server()
    coll = mongo.db().roll
    for code in (286, 136):
        server.cursor_loss_code = code
        with coll.watch(max_await_time_ms=20) as s:
            coll.insert_one({"_id": code})
            server.roll_oplog()
            with pytest.raises(OperationFailure) as lost:
                s.next()
        assert lost.value.code == code


def test_standalone_has_no_change_streams(mongo: MongoHandle) -> None:
    server = mongo.require_server()
    server.standalone = True
    client = mongo.client()
    assert "setName" not in client.admin.command("hello")
    with pytest.raises(OperationFailure) as info:
        client[mongo.database].s.watch()
    assert info.value.code == 40573
