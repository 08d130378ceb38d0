"""customers_cdc end to end: MongoDB test server -> pipeline -> MongoDB target.

In-process runs (`run_main`, the source ends when idle) check content, dead
letters and start-up failures; subprocess runs (`python -m bytewax.run ...
-r DIR -s 1 -b 0`, SIGKILLed at seeded random moments and restarted from the
recovery directory) check that the target converges to the source. The
server runs in the test process; its fault controls (oplog roll-over) need
the test server. Seed: $STREAMFORGE_CRASH_SEED (default 20261122); kills per
loop: $STREAMFORGE_CRASH_KILLS (default and minimum 5).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from bson import Regex
from bytewax.testing import TestingSink, run_main

from dataflows.config import Config, ConfigError
from dataflows.connectors.mongo import mongo_source_settings
from dataflows.connectors.mongo.source import MongoChangeSource
from dataflows.dead_letter import DeadLetter, ErrorCode
from dataflows.pipelines.customers_cdc import build_flow
from tests.fixtures.mongo import MongoHandle
from tests.mongo_server.harness import (
    PipelineProcess,
    Workload,
    crash_loop,
    documents,
    wait_streaming_committed,
    wait_until,
    write_config,
)

SEED = int(os.environ.get("STREAMFORGE_CRASH_SEED", "20261122"))
KILLS = max(5, int(os.environ.get("STREAMFORGE_CRASH_KILLS", "5")))


def config(mongo: MongoHandle, **source: Any) -> Config:
    return Config({
        "pipeline": {"name": "customers_cdc"},
        "source": {"type": "mongo", "uri": mongo.uri, "database": mongo.database,
                   "collections": ["customers"], "max-await": "20ms", **source},
        "sink": {"type": "mongo", "uri": mongo.uri, "database": mongo.database,
                 "collection": "customers_view"},
        "dlq": {"type": "file", "path": "/dev/null"},
    }, "test")


def run_bounded(cfg: Config, **settings: Any) -> tuple[list[DeadLetter], list[Any]]:
    """Run the flow in-process until the source has been idle for 0.4 s."""
    s = replace(mongo_source_settings(cfg.section("source"), "customers_cdc"), idle_eof_s=0.4, **settings)
    dead: list[DeadLetter] = []
    diffs: list[Any] = []
    run_main(build_flow(cfg, source=MongoChangeSource(s), dlq_sink=TestingSink(dead),
                        changes_sink=TestingSink(diffs)))
    return dead, diffs


def test_cdc_end_to_end_with_poison_documents(mongo: MongoHandle) -> None:
    db = mongo.db()
    db.customers.insert_many([{"_id": f"c{i}", "name": f"n{i}", "visits": i} for i in range(50)])
    db.customers.insert_one({"_id": "poison", "match": Regex("^x")})
    dead, diffs = run_bounded(config(mongo, **{"max-document-bytes": 2048}))
    expected = {k: v for k, v in documents(db.customers).items() if k != "poison"}
    assert documents(db.customers_view) == expected
    assert [(d.error_code, d.key) for d in dead] == [(ErrorCode.UNSUPPORTED_TYPE, b"poison")]
    assert len(diffs) >= 50  # the merger's diffs went to the changes sink


def test_invalid_token_resyncs_instead_of_skipping(mongo: MongoHandle) -> None:
    db = mongo.db()
    db.customers.insert_many([{"_id": f"c{i}"} for i in range(10)])
    dead, _ = run_bounded(config(mongo), initial_token={"_data": "corrupt"})
    assert documents(db.customers_view) == documents(db.customers) and not dead


def test_start_failures_are_clear(mongo: MongoHandle) -> None:
    bad_uri = config(mongo)
    bad_uri.data["source"]["uri"] = "mongo://nope"
    with pytest.raises(ConfigError, match="source.uri: not a valid MongoDB connection string"):
        build_flow(bad_uri)
    with pytest.raises(Exception) as info:  # noqa: B017 - Bytewax wraps the source's error
        run_bounded(config(mongo))
    chain, exc = [], info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("collection 'customers' does not exist" in text for text in chain), chain


def test_crash_loop_while_streaming(mongo: MongoHandle, tmp_path: Path) -> None:
    summary = crash_loop(mongo.db(), mongo.uri, tmp_path, seed=SEED, kills=KILLS)
    assert summary["starts"] == KILLS + 1 and summary["ops"] > 100


def test_crash_loop_during_resync_with_oplog_rollover(mongo: MongoHandle, tmp_path: Path) -> None:
    server = mongo.require_server()
    summary = crash_loop(mongo.db(), mongo.uri, tmp_path, seed=SEED + 1, kills=KILLS, resync_docs=1500,
                         roll_oplog=server.roll_oplog)
    assert summary["starts"] == KILLS + 1 and summary["rolls"] == KILLS // 2
    assert summary["resyncs_resumed"] >= 1, summary  # a restart continued a scan mid-way


def test_token_expiry_while_stopped_resyncs_and_deletes(mongo: MongoHandle, tmp_path: Path) -> None:
    server = mongo.require_server()
    db = mongo.db()
    db.customers.insert_many([{"_id": f"k{i:03d}", "v": i} for i in range(300)])
    # mirror off: the deletes must come from the Materializer's generation sweep alone
    proc = PipelineProcess.prepare(tmp_path, write_config(tmp_path / "c.yaml", uri=mongo.uri, database=db.name,
                                                          workdir=tmp_path, mirror=False))
    proc.start()
    try:
        wait_until(lambda: documents(db.customers_view) == documents(db.customers), 60, "first sync")
        wait_streaming_committed(proc)
        proc.kill()
        db.customers.delete_many({"v": {"$lt": 100}})  # deleted while the pipeline is down
        Workload(db.customers, SEED).run(50)
        server.roll_oplog()  # ...and the oplog no longer has those deletes
        proc.start()
        wait_until(lambda: documents(db.customers_view) == documents(db.customers), 60,
                   "re-sync after token expiry")
        assert not {f"k{i:03d}" for i in range(100)} & set(documents(db.customers_view))
        log = proc.log_tail(200)
        assert "re-sync as generation 2 (error 286 ChangeStreamHistoryLost)" in log and "reconcile" not in log
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{proc.log_tail()}") from None
    finally:
        proc.kill()
