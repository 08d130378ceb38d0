"""Compaction of recovery partitions: bounded state under key churn.

Bytewax writes a row with NULL ``ser_change`` when a key is discarded and
never deletes it; its own garbage collection (at each commit) only drops rows
superseded by a newer row at or below the partition's ``commit_epoch``. So a
flow whose keys expire (TTL, closed sessions, deletes) grows ``snaps`` forever.

`compact` deletes, per partition, for every key whose latest row at or below
``commit_epoch`` is NULL: that row and any older rows of the key; and, like
Bytewax's GC, rows superseded by a newer row at or below ``commit_epoch``.
This is safe because a resume never starts below ``commit_epoch`` (Bytewax
refuses with InconsistentPartitionsError) and loads, per key, the newest row
below the resume epoch: for such keys that was "no state", which is also
what it finds once the rows are gone. Rows above ``commit_epoch`` (those the
``-b`` backup interval keeps) are never touched.

It is safe while the flow runs: candidates are read once (rows at or below
the commit epoch are never rewritten by Bytewax), then deleted by primary key
in short transactions with a busy timeout.

Incremental checkpoints read only the rows written since their parent's epoch
(`recovery.delta.live_delta`): a discarded key's NULL row at or above that
epoch is how the next delta learns to delete the key, so `compact` keeps those
(their older rows still go). It runs under the checkpoint lock of the
recovery directory (`recovery.lease.local_lock`, so no checkpoint reads or
moves its parent meanwhile) and reads the parent's epoch from the default
checkpoint cache; if the lock stays busy for `LOCK_WAIT_S`, no NULL row is
deleted this time.
"""

from __future__ import annotations

import json
from pathlib import Path

from recovery.lease import CheckpointBusy, local_lock
from recovery.partitions import connect, partition_files

__all__ = ["compact", "compact_partition"]

BATCH = 2000
LOCK_WAIT_S = 30.0
_NO_FLOOR = -(2**62)  # no NULL row deleted

_CANDIDATES = """
SELECT s.step_id, s.state_key, s.snap_epoch FROM snaps AS s
WHERE s.snap_epoch <= ?1 AND (
  EXISTS (SELECT 1 FROM snaps AS n WHERE n.step_id = s.step_id AND n.state_key = s.state_key
          AND n.snap_epoch > s.snap_epoch AND n.snap_epoch <= ?1)
  OR (s.ser_change IS NULL AND (?2 IS NULL OR s.snap_epoch < ?2) AND NOT EXISTS (
      SELECT 1 FROM snaps AS n WHERE n.step_id = s.step_id AND n.state_key = s.state_key
      AND n.snap_epoch > s.snap_epoch AND n.snap_epoch <= ?1)))
"""


def compact_partition(path: Path, null_floor: int | None = None) -> int:
    """Compact one partition file; returns the number of rows deleted. A discarded
    key's NULL row is deleted only below `null_floor` (None: any)."""
    conn = connect(path)
    try:
        row = conn.execute(
            "SELECT commit_epoch FROM commits WHERE part_index = (SELECT part_index FROM parts)"
        ).fetchone()
        if row is None:
            return 0
        doomed = conn.execute(_CANDIDATES, (row[0], null_floor)).fetchall()
        for i in range(0, len(doomed), BATCH):
            with conn:
                conn.executemany(
                    "DELETE FROM snaps WHERE step_id = ? AND state_key = ? AND snap_epoch = ?",
                    doomed[i : i + BATCH],
                )
        return len(doomed)
    finally:
        conn.close()


def _parent_epoch(recovery_dir: Path) -> int | None:
    """The epoch of the cached checkpoint parent (None: no parent a delta could follow)."""
    from recovery.checkpoint import CACHE_META, default_cache_dir

    try:
        epoch = json.loads((default_cache_dir(recovery_dir) / CACHE_META).read_text())["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(epoch) if epoch is not None else None


def compact(recovery_dir: Path) -> int:
    """Compact every partition of `recovery_dir`; returns the rows deleted."""
    recovery_dir = Path(recovery_dir)
    files = partition_files(recovery_dir)
    try:
        with local_lock(recovery_dir, LOCK_WAIT_S):
            floor = _parent_epoch(recovery_dir)
            return sum(compact_partition(p, floor) for p in files)
    except CheckpointBusy:  # a checkpoint holds the lock: only superseded rows go
        return sum(compact_partition(p, _NO_FLOOR) for p in files)
