"""Non-restored state: a restore whose snapshot holds state of steps the flow lacks is refused.

Bytewax loads state by exact step id and ignores other rows (a renamed step
starts empty, silently). Every restore path matches the snapshot's step ids
to the flow's stateful steps (recovery/steps.py, streamforge_ops/restore_steps.py),
tested here through the CLI: `savepoint restore`, `restore`, `run` (local
resume) and `state migrate`, with version 2 of the test pipeline renaming its
stateful step `totals` to `sums` (tests/step_rename_flow.py).
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main

from dataflows.config import load_config
from recovery.steps import check_steps, renamed_id
from streamforge_ops.cli import main
from tests.supervisor_harness import Workspace, cli, read_rows, write_input

V2 = "tests.step_rename_flow:flow_renamed"
RENAME = {"supervised.totals": "supervised.sums"}


def rows_by_step(rdir: Path) -> dict[str, dict[tuple[str, int], bytes]]:
    """step id -> {(state key, epoch): pickled state} over all partitions."""
    out: dict[str, dict[tuple[str, int], bytes]] = {}
    for part in sorted(rdir.glob("part-*.sqlite3")):
        with sqlite3.connect(part) as conn:
            for step, key, epoch, blob in conn.execute(
                "SELECT step_id, state_key, snap_epoch, ser_change FROM snaps WHERE ser_change IS NOT NULL"
            ):
                out.setdefault(step, {})[(key, epoch)] = blob
    return out


def totals_of(rows: dict[str, dict[tuple[str, int], bytes]], prefix: str) -> dict[tuple[str, int], bytes]:
    (step,) = [s for s in rows if s.startswith(prefix + ".")]
    return rows[step]


def test_renamed_id_and_check() -> None:
    """Exact ids and dot-bounded prefixes rename; the longest rename wins."""
    assert renamed_id("a.totals.stateful_batch", {"a.totals": "a.sums"}) == "a.sums.stateful_batch"
    assert renamed_id("a.totals2.stateful_batch", {"a.totals": "a.sums"}) == "a.totals2.stateful_batch"
    assert renamed_id("a.x.y", {"a": "b", "a.x": "c"}) == "c.y"
    check = check_steps(["a.inp", "a.old.stateful_batch", "a.gone.stateful_batch"],
                        ["a.inp", "a.new.stateful_batch", "a.fresh.stateful_batch"], {"a.old": "a.new"})
    assert check.unclaimed == ["a.gone.stateful_batch"]
    assert check.new == ["a.fresh.stateful_batch"]
    assert check.renamed == {"a.old.stateful_batch": "a.new.stateful_batch"}
    assert check.matched == ["a.inp", "a.new.stateful_batch"]


def test_restore_refuses_state_of_a_step_the_flow_lacks(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """v1's savepoint into v2 (renamed step, no mapping): refused with the step listed,
    the local partitions untouched; `--allow-non-restored-state` drops it and says so."""
    sp = cli(capsys, "savepoint", "create")["id"]
    before = rows_by_step(ws.recovery)
    v2 = ws.config("v2.yaml", pipeline={"flow": V2})
    err = cli(capsys, "savepoint", "restore", sp, "--config", str(v2), code=2)
    assert "supervised.totals" in err and "--allow-non-restored-state" in err, err
    assert "state.step-renames" in err
    assert rows_by_step(ws.recovery) == before, "a refused restore leaves the local state alone"
    err = cli(capsys, "restore", "savepoint", sp, "--config", str(v2), code=2)
    assert "supervised.totals" in err

    done = cli(capsys, "restore", "savepoint", sp, "--config", str(v2), "--allow-non-restored-state")
    notes = "\n".join(done["notes"])
    assert "dropped" in notes and "supervised.totals" in notes
    assert "supervised.sums" in notes and "starts empty" in notes
    assert not any(s.startswith("supervised.totals") for s in rows_by_step(ws.recovery))

    allowed = ws.config("v2-allow.yaml", pipeline={"flow": V2},
                        savepoints={"allow-non-restored-state": True})
    assert cli(capsys, "savepoint", "restore", sp, "--config", str(allowed))["chosen"] == "savepoint"


def test_rename_mapping_restores_identical_state(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    """v1's savepoint restored into v2 with state.step-renames: the same rows under the new
    id, and v2 continues every user's running totals."""
    sp = cli(capsys, "savepoint", "create")["id"]
    v1_rows = totals_of(rows_by_step(ws.recovery), "supervised.totals")
    v2 = ws.config("v2.yaml", pipeline={"flow": V2}, state={"step-renames": RENAME})
    done = cli(capsys, "savepoint", "restore", sp, "--config", str(v2))
    assert any("restored as supervised.sums" in n for n in done["notes"]), done
    restored = rows_by_step(ws.recovery)
    assert totals_of(restored, "supervised.sums") == v1_rows
    assert not any(s.startswith("supervised.totals") for s in restored)

    from tests.step_rename_flow import build as build_v2

    write_input(ws.input, 10, start=50)
    run_main(build_v2(load_config(v2), totals_step="sums"), epoch_interval=timedelta(seconds=0),
             recovery_config=RecoveryConfig(str(ws.recovery)))
    rows = sorted(read_rows(ws.output), key=lambda r: r["id"])
    assert [r["id"] for r in rows][-10:] == list(range(50, 60))
    last = rows[-1]  # id 59, user u3: ids 3, 10, ..., 59 -> count 9 if the state carried over
    ids = [i for i in range(60) if i % 7 == 59 % 7]
    assert (last["count"], last["total"]) == (len(ids), sum(ids))


def test_state_migrate_applies_renames(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    """`state migrate --config v2` renames the steps of the local partitions; a second run
    finds nothing; a rename onto a step that has state is refused."""
    v1_rows = totals_of(rows_by_step(ws.recovery), "supervised.totals")
    v2 = ws.config("v2.yaml", pipeline={"flow": V2}, state={"step-renames": RENAME})
    assert cli(capsys, "state", "migrate", "--config", str(v2))["renamed"] == len(v1_rows)
    assert totals_of(rows_by_step(ws.recovery), "supervised.sums") == v1_rows
    assert cli(capsys, "state", "migrate", "--config", str(v2))["renamed"] == 0
    bad = ws.config("bad.yaml", state={"step-renames": {"supervised.out": "supervised.inp"}})
    assert "already has state" in cli(capsys, "state", "migrate", "--config", str(bad), code=2)
    typo = ws.config("typo.yaml", state={"step-renames": ["supervised.sums"]})
    assert "state.step-renames" in cli(capsys, "state", "migrate", "--config", str(typo), code=2)


def test_run_refuses_to_resume_local_state_the_flow_lacks(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` with v2 over v1's local partitions: refused at start, exit 2, nothing started;
    a new stateful step alone (flow_added) is reported as starting empty."""
    v2 = ws.config("v2.yaml", pipeline={"flow": V2})
    before = rows_by_step(ws.recovery)
    assert main(["run", "--config", str(v2)]) == 2
    err = capsys.readouterr().err
    assert "resume refused" in err and "supervised.totals" in err, err
    assert rows_by_step(ws.recovery) == before

    added = ws.config("added.yaml", pipeline={"flow": "tests.step_rename_flow:flow_added"})
    from streamforge_ops.job import load_job
    from streamforge_ops.restoring import prepare

    decision = prepare(load_job(str(added)), None)
    assert decision.chosen == "local"
    assert any("supervised.maxes" in n and "starts empty" in n for n in decision.notes), decision.notes


def test_flow_that_cannot_be_built(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    """A config error fails the restore (exit 2, the reason named); a service that did not
    answer while building skips the check with a note (the dataflow cannot run either and is
    restarted with backoff by the supervisor)."""
    sp = cli(capsys, "savepoint", "create")["id"]
    bad = ws.config("bad.yaml", pipeline={"flow": "tests.step_rename_flow:no_such_flow"})
    err = cli(capsys, "restore", "savepoint", sp, "--config", str(bad), code=2)
    assert "cannot build" in err and "no_such_flow" in err, err
    down = ws.config("down.yaml", pipeline={"flow": "tests.step_rename_flow:flow_unreachable()"})
    done = cli(capsys, "restore", "savepoint", sp, "--config", str(down))
    assert any("step-id check NOT done" in n and "did not answer metadata" in n for n in done["notes"])


def test_supervisor_restore_chain_refuses_too(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    """`run --restore latest` (the supervisor's restore chain over checkpoints, then savepoints):
    refused on the first candidate, no fallback to an older one, local partitions untouched."""
    cli(capsys, "checkpoint", "create")
    cli(capsys, "savepoint", "create")
    before = rows_by_step(ws.recovery)
    v2 = ws.config("v2.yaml", pipeline={"flow": V2})
    assert main(["run", "--config", str(v2), "--restore", "latest"]) == 2
    err = capsys.readouterr().err
    assert "restore failed" in err and "checkpoint" in err and "supervised.totals" in err, err
    assert rows_by_step(ws.recovery) == before
