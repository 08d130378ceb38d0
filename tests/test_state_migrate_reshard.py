"""`streamforge state migrate --reshard STEP=N`: per-key dedup / sessions state (written with
`shards=None`, before shards became the default) re-keyed through the CLI resumes in the
sharded step with the output of one uninterrupted run; bad arguments are refused at start,
before anything in the directory changes."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from streamforge_ops.cli import main
from tests.supervisor_harness import cli
from tests.test_patterns_harness import by_id, run_pattern
from tests.test_patterns_recovery import PATTERNS, per_key_state, workload

STEP = "patterns_test.sessions.sessions.stateful_batch"


def _rows(rec: Path) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for part in sorted(rec.glob("part-*.sqlite3")):
        with sqlite3.connect(part) as conn:
            rows += conn.execute("SELECT step_id, state_key, snap_epoch, ser_change FROM snaps "
                                 "ORDER BY 1, 2, 3").fetchall()
    return rows


def test_reshard_through_the_cli_resumes_identically(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec, items, out = per_key_state("sessions_per_key", tmp_path)
    report = cli(capsys, "state", "migrate", "--dir", str(rec), "--reshard", f"{STEP}=64")
    assert report["resharded"][STEP] > 0
    keys = {key for step, key, _, _ in _rows(rec) if step == STEP}
    assert keys and all(k.isdigit() and 0 <= int(k) < 64 for k in keys)  # shard rows only
    again = cli(capsys, "state", "migrate", "--dir", str(rec), "--reshard", f"{STEP}=64")
    assert again["resharded"] == {STEP: 0}  # already sharded
    run_pattern(PATTERNS["sessions"], items, recovery_dir=rec, out=out)  # shards=64, the default
    assert by_id(out) == by_id(run_pattern(PATTERNS["sessions"], workload()))


def _exit_code(argv: list[str]) -> int:
    """`main`'s return code, or the one argparse exits with for a bad argument."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(("arg", "message"), [
    ("nosuchstep=64", "holds no state of step 'nosuchstep'"),
    (f"{STEP}=0", "expected STEP=N"),
    (f"{STEP}", "expected STEP=N"),
])
def test_a_bad_reshard_is_refused_and_changes_nothing(
        arg: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec, _, _ = per_key_state("sessions_per_key", tmp_path)
    before = _rows(rec)
    assert _exit_code(["state", "migrate", "--dir", str(rec), "--reshard", arg]) == 2
    assert message in capsys.readouterr().err
    assert _rows(rec) == before
