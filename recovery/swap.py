"""Crash-safe swap of restored partitions into the recovery directory.

A kill -9 at any moment of a restore leaves the old partitions or the new
ones, never k of N. The recovery directory itself is never renamed (it may be
a mount point) and never missing; everything happens inside it:

1. `stage_dir` gives an empty ``.restore-new/`` in the recovery directory;
   the restore downloads and verifies the new partitions there.
2. `swap_in` fsyncs every staged file and the stage directory, then writes
   the journal ``.restore-journal`` (the list of new partition files) with a
   write-fsync-rename-fsync: this rename is the commit point.
3. It moves each staged file over the old one (first deleting the old one's
   ``-wal``/``-shm``, which SQLite would otherwise replay into the new file),
   deletes old partitions the journal does not list, fsyncs the directory,
   then deletes the journal and the stage.

`settle` runs before anything reads the directory (every restore, and the
supervisor's start): with a journal it completes the swap (step 3 is
idempotent: a file still in the stage has not been moved yet); without one
it deletes a stage left by an interrupted download, so the old partitions
stand. It also cleans the sibling ``.NAME.old-*`` / ``.NAME.restore-*``
directories of the earlier rename-based swap, putting an ``.old-*`` back if
the recovery directory is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

from dataflows.faults import fault_point
from recovery.partitions import partition_files

__all__ = ["JOURNAL", "STAGE", "settle", "stage_dir", "swap_in"]

STAGE = ".restore-new"
JOURNAL = ".restore-journal"
_SIDECARS = ("-wal", "-shm", "-journal")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_partition(path: Path) -> None:
    for suffix in _SIDECARS:
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def _roll_forward(recovery_dir: Path, names: list[str]) -> None:
    """Move every still-staged file into place; drop partitions not in `names`."""
    stage = recovery_dir / STAGE
    for name in names:
        staged = stage / name
        if staged.exists():  # not moved yet: what is in place is the old file
            for suffix in _SIDECARS:
                (recovery_dir / (name + suffix)).unlink(missing_ok=True)
            os.replace(staged, recovery_dir / name)
            fault_point("restore.swap")
    for part in partition_files(recovery_dir):
        if part.name not in names:
            _remove_partition(part)
    for leftover in recovery_dir.glob("part-*.sqlite3-*"):
        if leftover.name.split(".sqlite3")[0] + ".sqlite3" not in names:
            leftover.unlink(missing_ok=True)
    _fsync_dir(recovery_dir)


def _finish(recovery_dir: Path) -> None:
    (recovery_dir / JOURNAL).unlink(missing_ok=True)
    _fsync_dir(recovery_dir)
    shutil.rmtree(recovery_dir / STAGE, ignore_errors=True)


def _settle_legacy(recovery_dir: Path) -> list[str]:
    notes = []
    parent = recovery_dir.parent
    olds = sorted(parent.glob(f".{recovery_dir.name}.old-*"))
    if olds and not recovery_dir.exists():
        olds.pop().rename(recovery_dir)
        notes.append(
            f"{recovery_dir} was missing after an interrupted restore; put the old one back"
        )
    for stale in [*olds, *parent.glob(f".{recovery_dir.name}.restore-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    return notes


def settle(recovery_dir: Path) -> list[str]:
    """Complete or roll back an interrupted swap (see module doc); notes on what was done."""
    recovery_dir = Path(recovery_dir)
    notes = _settle_legacy(recovery_dir) if recovery_dir.parent.is_dir() else []
    journal = recovery_dir / JOURNAL
    (recovery_dir / f"{JOURNAL}.tmp").unlink(missing_ok=True)
    if journal.exists():
        names = json.loads(journal.read_text())["files"]
        _roll_forward(recovery_dir, names)
        _finish(recovery_dir)
        notes.append(f"completed an interrupted restore swap in {recovery_dir}")
    elif (recovery_dir / STAGE).exists():
        shutil.rmtree(recovery_dir / STAGE, ignore_errors=True)
        notes.append(f"rolled back an interrupted restore in {recovery_dir} (old partitions kept)")
    return notes


def stage_dir(recovery_dir: Path) -> Path:
    """A fresh, empty stage directory inside `recovery_dir` (created if missing)."""
    recovery_dir.mkdir(parents=True, exist_ok=True)
    stage = recovery_dir / STAGE
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    return stage


def swap_in(recovery_dir: Path) -> None:
    """Make the partitions staged by `stage_dir` the recovery directory's (see module doc)."""
    stage = recovery_dir / STAGE
    names = [p.name for p in partition_files(stage)]
    for name in names:
        if (stage / f"{name}-wal").exists():  # only the main file is moved: fold the WAL in
            conn = sqlite3.connect(stage / name)
            try:
                conn.execute("PRAGMA journal_mode = DELETE")
            finally:
                conn.close()
        _fsync_file(stage / name)
    _fsync_dir(stage)
    fault_point("restore.swap")
    tmp = recovery_dir / f"{JOURNAL}.tmp"
    with open(tmp, "w") as f:
        json.dump({"files": names}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, recovery_dir / JOURNAL)
    _fsync_dir(recovery_dir)
    fault_point("restore.swap")
    _roll_forward(recovery_dir, names)
    _finish(recovery_dir)
