"""End to end on S3 (moto's server over real HTTP, tests/fixtures/s3.py): checkpoints and
the cancel savepoint go to s3://; after the node's recovery directory is lost, the next
run restores the latest checkpoint from S3 and completes the output exactly once."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

from recovery.checkpoint import list_checkpoints
from recovery.savepoint import list_savepoints
from recovery.store import open_store
from tests.fixtures.s3 import S3Target
from tests.supervisor_harness import Workspace, assert_exactly_once, read_rows, wait_for


def test_node_failure_restores_from_s3(tmp_path: Path, s3_bucket: S3Target) -> None:
    ws = Workspace(tmp_path, n=300)
    store = {"dir": s3_bucket.url, "endpoint-url": s3_bucket.endpoint_url}
    tail = ws.config("tail.yaml", source={"tail": True, "delay": 0.05},
                     checkpoints=store, savepoints=store)
    proc = ws.start("--json", config=tail)
    ws.running(proc)
    wait_for(lambda: ws.status().get("checkpoints", 0) >= 2 and len(read_rows(ws.output)) >= 30,
             what="two checkpoints in S3")
    code, out, err = ws.stop(proc, signal.SIGTERM)
    assert code == 0, err
    s3 = open_store(s3_bucket.url, endpoint_url=s3_bucket.endpoint_url)
    assert [m.id for m in list_savepoints(s3, "sup")] == [json.loads(out.splitlines()[-1])["savepoint"]]
    newest = list_checkpoints(s3, "sup")[0].id

    shutil.rmtree(ws.recovery)  # the node is gone; only S3 remains
    bounded = ws.config("bounded.yaml", checkpoints=store, savepoints=store)
    code, out, err = ws.finish(ws.start("--json", config=bounded))
    assert code == 0, err
    restored = json.loads(out.splitlines()[-1])["restored"]
    assert (restored["chosen"], restored["id"]) == ("checkpoint", newest)
    assert_exactly_once(read_rows(ws.output), 300)
