"""Benchmark: MongoDB CDC through the customers_cdc pipeline vs a raw pymongo loop.

    .venv/bin/python bench/mongo.py [--events 20000] [--keys 2000] [--resync-docs 20000] [--json]

One run, one test server (`tests/mongo_server`, in its own process so it does
not share the GIL with what is measured):

1. `--keys` documents, then the start token, then `--events` changes
   (updates, replaces, inserts, deletes) on `src`;
2. raw: a pymongo loop reads the same change stream (resumeAfter the start
   token, `fullDocument: updateLookup`) and writes each batch with one
   ordered `bulk_write` of `replace_one(upsert)` / `delete_one` -> `dst_raw`;
3. pipeline: source -> StatefulMerger -> Materializer -> Mongo writer ->
   `dst_pipe`, in-process (`bytewax.testing.run_main`), from the same token;
4. re-sync: a `--resync-docs` collection scanned by the SnapshotLoader through
   the same pipeline (fresh state, unthrottled, 1024-document chunks).

Prints `{"pipeline_eps", "raw_eps", "ratio", "resync_docs_per_s", ...}`;
both targets are checked against the source before anything is printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402
from bytewax.testing import TestingSink, run_main  # noqa: E402
from pymongo import DeleteOne, MongoClient, ReplaceOne, UpdateOne  # noqa: E402

from dataflows.config import Config  # noqa: E402
from dataflows.connectors.mongo import mongo_source_settings  # noqa: E402
from dataflows.connectors.mongo.source import MongoChangeSource  # noqa: E402
from dataflows.pipelines.customers_cdc import build_flow  # noqa: E402

IDLE_EOF_S = 0.5


class _Discard(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        pass


class DiscardSink(DynamicSink[Any]):
    """Where the merger's diffs go in the benchmark (so the merger runs and is measured)."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Discard:
        return _Discard()


def start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.mongo_server", "--oplog-size", "2000000"],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def make_changes(db: Any, events: int, keys: int) -> dict[str, Any]:
    """Seed `keys` documents, return the token, then write `events` changes."""
    db.src.insert_many([{"_id": f"c{i:06d}", "name": f"n{i}", "visits": 0} for i in range(keys)])
    with db.src.watch() as stream:
        token = stream.resume_token
    ops: list[Any] = []
    for n in range(events):
        k = f"c{(n * 7919) % (keys * 2):06d}"
        r = n % 10
        if r < 6:
            ops.append(UpdateOne({"_id": k}, {"$inc": {"visits": 1}, "$set": {"last": n}}, upsert=True))
        elif r < 9:
            ops.append(ReplaceOne({"_id": k}, {"name": f"r{n}", "visits": n}, upsert=True))
        else:
            ops.append(DeleteOne({"_id": k}))
        if len(ops) == 1000:
            db.src.bulk_write(ops)
            ops = []
    if ops:
        db.src.bulk_write(ops)
    return token


def count_events(db: Any, token: dict[str, Any]) -> int:
    n = 0
    with db.src.watch(resume_after=token, max_await_time_ms=50, batch_size=1000) as s:
        while s.try_next() is not None:
            n += 1
    return n


def raw_loop(db: Any, token: dict[str, Any], events: int) -> float:
    """Seconds for a plain pymongo read-and-write loop over `events` change events."""
    t0 = time.perf_counter()
    seen = 0
    with db.src.watch(resume_after=token, full_document="updateLookup", max_await_time_ms=50,
                      batch_size=1000) as stream:
        ops: list[Any] = []
        while seen < events:
            ch = stream.try_next()
            if ch is not None:
                seen += 1
                doc, key = ch.get("fullDocument"), ch["documentKey"]["_id"]
                ops.append(DeleteOne({"_id": key}) if doc is None else ReplaceOne({"_id": key}, doc, upsert=True))
            if ops and (ch is None or len(ops) >= 1000 or seen == events):
                db.dst_raw.bulk_write(ops, ordered=True)
                ops = []
    return time.perf_counter() - t0


def pipeline_run(uri: str, db_name: str, coll: str, target: str, token: dict[str, Any] | None) -> float:
    """Seconds for the customers_cdc flow to drain `coll` into `target` (minus the idle wait)."""
    section = {"type": "mongo", "uri": uri, "database": db_name, "collections": [coll],
               "max-await": "20ms", "batch-size": 1000}
    cfg = Config({"pipeline": {"name": "bench_mongo"}, "source": section,
                  "sink": {"type": "mongo", "uri": uri, "database": db_name, "collection": target},
                  "dlq": {"type": "file", "path": "/dev/null"}}, "bench")
    settings = replace(mongo_source_settings(cfg.section("source"), "bench_mongo"),
                       initial_token=token, idle_eof_s=IDLE_EOF_S)
    dead: list[Any] = []
    flow = build_flow(cfg, source=MongoChangeSource(settings), dlq_sink=TestingSink(dead),
                      changes_sink=DiscardSink())
    t0 = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - t0 - IDLE_EOF_S
    assert not dead, f"bench produced dead letters: {dead[:3]}"
    return elapsed


def same(a: Any, b: Any) -> bool:
    return {d["_id"]: d for d in a.find()} == {d["_id"]: d for d in b.find()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--keys", type=int, default=2_000)
    ap.add_argument("--resync-docs", type=int, default=20_000)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    proc, uri = start_server()
    try:
        client: MongoClient[Any] = MongoClient(uri)
        db = client.bench
        token = make_changes(db, args.events, args.keys)
        events = count_events(db, token)
        raw_s = raw_loop(db, token, events)
        pipe_s = pipeline_run(uri, "bench", "src", "dst_pipe", token)
        if not same(db.dst_raw, db.dst_pipe):
            raise SystemExit("pipeline target differs from the raw loop's target")
        db.big.insert_many([{"_id": f"d{i:07d}", "name": f"n{i}", "tier": i % 3} for i in range(args.resync_docs)])
        resync_s = pipeline_run(uri, "bench", "big", "big_copy", None)
        if not same(db.big, db.big_copy):
            raise SystemExit("re-sync target differs from source")
        client.close()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    result = {
        "pipeline_eps": round(events / pipe_s, 1),
        "raw_eps": round(events / raw_s, 1),
        "ratio": round(raw_s / pipe_s, 3),
        "resync_docs_per_s": round(args.resync_docs / resync_s, 1),
        "events": events,
        "resync_docs": args.resync_docs,
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
