"""Rescaling through savepoints: 1 worker -> 2 workers -> 1 worker, with identical results.

The partition count (4) is fixed at init; the worker count changes on each
restore. Also covers DELETE_ON_CANCELLATION (checkpoints removed on cancel,
savepoints kept).
"""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

from recovery.checkpoint import list_checkpoints
from recovery.store import open_store
from streamforge_ops.epochs import cluster_frontier
from tests.supervisor_harness import Workspace, assert_exactly_once, read_rows, wait_for


def _cancel(ws: Workspace, proc) -> str:  # type: ignore[no-untyped-def]
    """Let the run add >= 30 rows and make them durable, SIGTERM it; the savepoint id.

    Durable means the epoch that wrote them has closed: rows seen in the output while the
    recorded cluster frontier is F were written in an epoch <= F + 1 (the open epoch, or the one
    after it if the record lags), so once the frontier passes F + 1 the cancel savepoint (taken at
    the last closed epoch) covers them. Checkpoints alone do not show it: on
    a loaded machine two checkpoints can seal the same early epoch."""
    ws.running(proc)
    min_rows = len(read_rows(ws.output)) + 30
    wait_for(lambda: len(read_rows(ws.output)) >= min_rows and cluster_frontier(ws.recovery) is not None,
             what=f"{min_rows} output rows")
    seen_at = cluster_frontier(ws.recovery)
    assert seen_at is not None
    wait_for(lambda: (cluster_frontier(ws.recovery) or 0) > seen_at + 1 and ws.status().get("checkpoints", 0) >= 2,
             what=f"the frontier past epoch {seen_at + 1} and two checkpoints (durable progress)")
    code, out, err = ws.stop(proc, signal.SIGTERM)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["outcome"] == "cancelled" and summary["savepoint"], summary
    return str(summary["savepoint"])


def _worker_counts(recovery: Path) -> set[int]:
    counts: set[int] = set()
    for part in recovery.glob("part-*.sqlite3"):
        with sqlite3.connect(part) as conn:
            counts |= {row[0] for row in conn.execute("SELECT worker_count FROM exs")}
    return counts


def test_rescale_1_2_1_through_savepoints(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, n=300, overrides={
        "checkpoints": {"externalized-retention": "DELETE_ON_CANCELLATION"},
    })
    tail = ws.config("tail.yaml", source={"tail": True, "delay": 0.1})
    sp1 = _cancel(ws, ws.start("--json", "--workers", "1", config=tail))
    assert list_checkpoints(open_store(ws.store_url), "sup") == [], "DELETE_ON_CANCELLATION"

    sp2 = _cancel(ws, ws.start("--json", "--workers", "2", "--restore", f"savepoint:{sp1}",
                               config=tail))
    assert 2 in _worker_counts(ws.recovery), "the second run really ran 2 workers"

    code, out, err = ws.finish(ws.start("--json", "--workers", "1", "--restore", f"savepoint:{sp2}"))
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["restored"] == {**summary["restored"], "chosen": "savepoint", "id": sp2}
    rows = read_rows(ws.output)
    assert_exactly_once(rows, 300)
    assert [r["tag"] for r in sorted(rows, key=lambda r: r["id"])][-1] == "3"
    assert {r["tag"] for r in rows} == {"1", "2", "3"}, "each run wrote its share, none rewrote all"
