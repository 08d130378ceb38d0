"""`streamforge savepoint verify ID --config NEW`: restore into a scratch directory, load every
state row with the new code, run the new flow on it with sinks discarded; exit 1 on failure.
The local recovery directory and the real outputs are never touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.supervisor_harness import Workspace, cli


def test_verify_passes_for_compatible_code(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    sp = cli(capsys, "savepoint", "create")["id"]
    output = ws.output.read_bytes()
    v2 = ws.config("v2.yaml", pipeline={"flow": "tests.supervised_flow:flow_v2"})
    report = cli(capsys, "savepoint", "verify", sp, "--config", str(v2), "--run-for", "2s")
    assert report["ok"] is True, report["failures"]
    (totals,) = [r for s, r in report["steps"].items() if s.startswith("supervised.totals")]
    assert (totals["rows"], totals["loaded"], totals["migrated"], totals["failed"]) == (7, 7, 0, 0)
    assert report["sources"]["supervised.inp"]["lines"] == {
        "saved": 50, "resumed": 50, "resumes_from_saved": True}
    assert "supervised.out" in report["run"]["discarded"]
    assert ws.output.read_bytes() == output, "the real sink was not written"


def test_verify_fails_on_unclaimed_state_and_broken_migration(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    sp = cli(capsys, "savepoint", "create")["id"]
    renamed = ws.config("v2.yaml", pipeline={"flow": "tests.step_rename_flow:flow_renamed"})
    report = cli(capsys, "savepoint", "verify", sp, "--config", str(renamed), code=1)
    assert report["ok"] is False and report["step_check"]["unclaimed"] == [
        "supervised.totals.stateful_flat_map.stateful.stateful_batch"]
    assert "supervised.sums.stateful_flat_map.stateful.stateful_batch" in report["step_check"]["new"]
    mapped = ws.config("v2m.yaml", pipeline={"flow": "tests.step_rename_flow:flow_renamed"},
                       state={"step-renames": {"supervised.totals": "supervised.sums"}})
    assert cli(capsys, "savepoint", "verify", sp, "--config", str(mapped), "--run-for", "1s")["ok"] is True

    broken = ws.config("bad.yaml", pipeline={"flow": "tests.verify_bad_flow:flow"})
    report = cli(capsys, "savepoint", "verify", sp, "--config", str(broken), code=1)
    (totals,) = [r for s, r in report["steps"].items() if s.startswith("supervised.totals")]
    assert (totals["rows"], totals["loaded"], totals["failed"]) == (7, 0, 7)
    assert "total is not a field any more" in totals["first_error"]
    assert report["run"] == {"skipped": "an earlier failure"}


def test_rows_written_by_newer_code_fail(tmp_path: Path) -> None:
    """A DedupState of version 3 where this code's Deduplicator knows version 2 (a downgrade)
    is a failed row; the same state at version 2 loads."""
    import pickle
    import sqlite3

    from dataflows.patterns.dedup import Deduplicator, DedupState
    from recovery.partitions import init_partitions
    from streamforge_ops.verify import load_rows

    init_partitions(tmp_path / "r", 1)
    current = Deduplicator.STATE_VERSION
    with sqlite3.connect(tmp_path / "r" / "part-0.sqlite3") as conn:
        for key, version in (("a", current), ("b", current + 1)):
            conn.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, 1, ?)",
                         ("p.dedup.stateful_batch", key, pickle.dumps(DedupState(1, 2, version))))
    rep = load_rows(tmp_path / "r")["p.dedup.stateful_batch"]
    assert (rep.rows, rep.loaded, rep.failed) == (2, 1, 1)
    assert rep.first_error is not None and "written by newer code" in rep.first_error
