"""kill -9 at every step of a restore swap leaves the old partitions or the new ones.

A child process restores a checkpoint over a recovery directory holding
another state, with `STREAMFORGE_FAULT_POINT=restore.swap@N` (dataflows.faults:
SIGKILL at the N-th hit of the point). `recovery.swap` hits it after the
stage is fsynced, after the journal is committed and after each partition
file is moved into place. After each kill, `settle` (what every start runs
first) must leave exactly the old digests or exactly the new ones, the
recovery directory present, and no stage, journal or sibling directory.

On the old code (a rename of the directory aside, then per file), a kill at
the first point left the recovery directory missing (renamed to
``.rec.old-*``), and in the per-file path k of N partitions.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recovery.checkpoint import take_checkpoint
from recovery.partitions import init_partitions, logical_digest, partition_files
from recovery.store import open_store
from recovery.swap import JOURNAL, STAGE, settle
from tests.test_recovery_support import counting_flow, run, segments, uploaded_digests

REPO = Path(__file__).resolve().parents[1]
PARTS = 3
_RESTORE = """
import sys
from pathlib import Path
from recovery.restore import restore
from recovery.store import open_store
store = open_store(sys.argv[2])
restore(Path(sys.argv[1]), checkpoint_store=store, savepoint_store=store, pipeline="orders",
        partition_count=int(sys.argv[3]))
"""
_SETTLE = "import sys; from recovery.swap import settle; settle(__import__('pathlib').Path(sys.argv[1]))"


def _digests(rd: Path) -> list[str]:
    return [logical_digest(p) for p in partition_files(rd)]


def _child(code: str, *args: str, fault: str) -> int:
    env = {**os.environ, "STREAMFORGE_FAULT_POINT": fault, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=REPO).returncode


@pytest.fixture
def states(tmp_path: Path) -> tuple[Path, str, list[str], list[str]]:
    """A pristine "old" recovery dir, a store holding a checkpoint of another state."""
    new = tmp_path / "new"
    init_partitions(new, PARTS)
    run(counting_flow(segments([["k", 60, 20, 1]]), []), new)
    url = f"file://{tmp_path}/store"
    ck = take_checkpoint(new, open_store(url), pipeline="orders")
    old = tmp_path / "old"
    init_partitions(old, PARTS)
    run(counting_flow(segments([["j", 30, 7, 2]]), []), old)
    new_digests = uploaded_digests(open_store(url), ck)
    assert len(set(_digests(old)) & set(new_digests)) == 0
    return old, url, _digests(old), new_digests


def _assert_old_or_new(rd: Path, old: list[str], new: list[str]) -> str:
    assert rd.is_dir()
    got = _digests(rd)
    assert got in (old, new), "a mix of old and new partitions"
    assert not (rd / STAGE).exists() and not (rd / JOURNAL).exists()
    assert [p.name for p in rd.parent.iterdir() if p.name.startswith(f".{rd.name}.")] == []
    return "old" if got == old else "new"


def test_kill_at_every_swap_step_leaves_old_or_new(tmp_path: Path, states) -> None:
    pristine, url, old, new = states
    rd = tmp_path / "rec"
    seen = []
    for nth in range(1, PARTS + 4):
        shutil.rmtree(rd, ignore_errors=True)
        shutil.copytree(pristine, rd)
        code = _child(_RESTORE, str(rd), url, str(PARTS), fault=f"restore.swap@{nth}")
        if code == 0:  # the point was not reached this often: the restore completed
            seen.append(("done", _assert_old_or_new(rd, old, new)))
            break
        assert code == -signal.SIGKILL
        settle(rd)
        seen.append((nth, _assert_old_or_new(rd, old, new)))
    # stage fsynced -> old; journal committed and every later point -> new; then done
    assert seen == [(1, "old"), *((n, "new") for n in range(2, PARTS + 3)), ("done", "new")]


def test_kill_while_settling_an_interrupted_swap(tmp_path: Path, states) -> None:
    """settle's roll-forward is idempotent: killed in the middle of it, the next one finishes."""
    pristine, url, old, new = states
    rd = tmp_path / "rec"
    shutil.copytree(pristine, rd)
    assert _child(_RESTORE, str(rd), url, str(PARTS), fault="restore.swap@3") == -signal.SIGKILL
    assert (rd / JOURNAL).exists()
    assert _child(_SETTLE, str(rd), fault="restore.swap@1") == -signal.SIGKILL
    assert settle(rd) == [f"completed an interrupted restore swap in {rd}"]
    assert _assert_old_or_new(rd, old, new) == "new"


def test_legacy_rename_leftovers_are_repaired(tmp_path: Path, states) -> None:
    """The old swap, killed after renaming the directory aside, left it missing: put it back."""
    pristine, _, old, new = states
    rd = tmp_path / "rec"
    shutil.copytree(pristine, tmp_path / ".rec.old-abc123")
    (tmp_path / ".rec.restore-def456").mkdir()
    assert "was missing" in settle(rd)[0]
    assert _assert_old_or_new(rd, old, new) == "old"
