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
    ws = Workspace(tmp_path, n=1500)  # enough input that v1 is still reading when it is stopped
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
    assert "stop savepoint" in err and "stopping the running supervisor" in err

    rows = read_rows(ws.output)
    assert_exactly_once(rows, 1500)
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
    assert_exactly_once(fresh, 1500)
    assert {r["tag"] for r in fresh} == {str(ws.runs)} and {r["version"] for r in fresh} == {2}


def test_upgrade_savepoint_restores_the_savepoint_taken_after_the_old_version_stopped(
    tmp_path: Path,
) -> None:
    """Issue 9 item 8. A savepoint taken while version 1 still runs is stale by the time it
    stops: v1 goes on committing epochs (and, with a sink that does not rewind, output)
    after it, and v2 restored from it would produce that stretch again. The upgrade must
    restore the savepoint v1's supervisor took once its dataflow had stopped (the cancel
    savepoint), and nothing else."""
    ws = Workspace(tmp_path, n=400)
    v1 = ws.config("v1.yaml", source={"tail": True, "delay": 0.05})
    v2 = ws.config("v2.yaml", pipeline={"flow": "tests.supervised_flow:flow_v2", "code-version": "2"},
                   source={"tail": False, "delay": 0.01})
    old = ws.start("--json", config=v1)
    ws.running(old)
    wait_for(lambda: len(read_rows(ws.output)) >= 60 and ws.status().get("checkpoints", 0) >= 1,
             what="version 1 output and durable progress")
    up = ws.start("--mode", "savepoint", "--json", config=v2, command="upgrade")
    code, old_out, old_err = ws.finish(old)
    assert code == 0, old_err
    stop_savepoint = _summary(old_out)["savepoint"]
    assert stop_savepoint, old_err
    code, out, err = ws.finish(up)
    assert code == 0, err
    restored = _summary(out)["restored"]
    assert (restored["chosen"], restored["id"]) == ("savepoint", stop_savepoint), err
    rows = read_rows(ws.output)
    assert_exactly_once(rows, 400)


def test_upgrade_savepoint_without_cancel_savepoint_takes_it_after_the_stop(tmp_path: Path) -> None:
    """savepoints.on-cancel off (as in the rendered pod config, where preStop takes it): the
    upgrade stops v1 first and only then takes the savepoint of its quiescent partitions."""
    ws = Workspace(tmp_path, n=300)
    v1 = ws.config("v1.yaml", source={"tail": True, "delay": 0.05}, savepoints={"on-cancel": False})
    v2 = ws.config("v2.yaml", pipeline={"flow": "tests.supervised_flow:flow_v2", "code-version": "2"},
                   source={"tail": False, "delay": 0.01}, savepoints={"on-cancel": False})
    old = ws.start(config=v1)
    ws.running(old)
    wait_for(lambda: len(read_rows(ws.output)) >= 60 and ws.status().get("checkpoints", 0) >= 1,
             what="version 1 output and durable progress")
    up = ws.start("--mode", "savepoint", "--json", config=v2, command="upgrade")
    assert ws.finish(old)[0] == 0
    code, out, err = ws.finish(up)
    assert code == 0, err
    assert err.index(" stopped") < err.rindex("taking upgrade savepoint"), err
    assert _summary(out)["restored"]["chosen"] == "savepoint"
    assert_exactly_once(read_rows(ws.output), 300)
