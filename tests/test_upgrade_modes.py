"""`streamforge upgrade`: version 1 runs, is upgraded to version 2 (a code change that
adds a field) through a savepoint; nothing is lost or duplicated. Then last-state
(restores the newest checkpoint) and stateless (fresh start) on the same job."""

from __future__ import annotations

import json
from pathlib import Path

from tests.supervisor_harness import Workspace, assert_exactly_once, read_rows, wait_for


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_upgrade_savepoint_then_last_state_then_stateless(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, n=300)
    v1 = ws.config("v1.yaml", source={"tail": True, "delay": 0.05})
    v2 = ws.config(
        "v2.yaml",
        pipeline={"flow": "tests.supervised_flow:flow_v2", "code-version": "2"},
        source={"tail": False, "delay": 0.01},
    )
    old = ws.start(config=v1)
    ws.running(old)
    wait_for(lambda: len(read_rows(ws.output)) >= 60 and ws.status().get("checkpoints", 0) >= 2,
             what="version 1 output and durable progress")

    up = ws.start("--mode", "savepoint", "--json", config=v2, command="upgrade")
    assert ws.finish(old)[0] == 0, "the old supervisor stops cleanly on the upgrade's SIGTERM"
    code, out, err = ws.finish(up)
    assert code == 0, err
    summary = _summary(out)
    assert summary["outcome"] == "completed"
    assert summary["restored"]["chosen"] == "savepoint"
    assert "upgrade savepoint" in err and "stopping the running supervisor" in err

    rows = read_rows(ws.output)
    assert_exactly_once(rows, 300)
    v1_ids = [r["id"] for r in rows if r["version"] == 1]
    v2_rows = [r for r in rows if r["version"] == 2]
    assert v1_ids and v2_rows, "both versions wrote part of the output"
    assert max(v1_ids) < min(r["id"] for r in v2_rows), "v2 continued where the savepoint was"
    assert all(r["avg"] == r["total"] / r["count"] for r in v2_rows)

    code, out, err = ws.finish(ws.start("--mode", "last-state", "--max-checkpoint-age", "1h", "--json",
                                        config=v2, command="upgrade"))
    assert code == 0, err
    assert _summary(out)["restored"]["chosen"] == "checkpoint"
    assert read_rows(ws.output) == rows, "restored the final checkpoint: nothing recomputed"

    code, out, err = ws.finish(ws.start("--mode", "stateless", "--json", config=v2, command="upgrade"))
    assert code == 0, err
    assert _summary(out)["restored"]["chosen"] == "fresh"
    fresh = read_rows(ws.output)
    assert_exactly_once(fresh, 300)
    assert {r["tag"] for r in fresh} == {str(ws.runs)} and {r["version"] for r in fresh} == {2}
