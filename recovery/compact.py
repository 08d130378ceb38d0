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
"""

from __future__ import annotations

from pathlib import Path

from recovery.partitions import connect, partition_files

__all__ = ["compact", "compact_partition"]

BATCH = 2000

_CANDIDATES = """
SELECT s.step_id, s.state_key, s.snap_epoch FROM snaps AS s
WHERE s.snap_epoch <= ?1 AND (
  EXISTS (SELECT 1 FROM snaps AS n WHERE n.step_id = s.step_id AND n.state_key = s.state_key
          AND n.snap_epoch > s.snap_epoch AND n.snap_epoch <= ?1)
  OR (s.ser_change IS NULL AND NOT EXISTS (
      SELECT 1 FROM snaps AS n WHERE n.step_id = s.step_id AND n.state_key = s.state_key
      AND n.snap_epoch > s.snap_epoch AND n.snap_epoch <= ?1)))
"""


def compact_partition(path: Path) -> int:
    """Compact one partition file; returns the number of rows deleted."""
    conn = connect(path)
    try:
        row = conn.execute(
            "SELECT commit_epoch FROM commits WHERE part_index = (SELECT part_index FROM parts)"
        ).fetchone()
        if row is None:
            return 0
        doomed = conn.execute(_CANDIDATES, (row[0],)).fetchall()
        for i in range(0, len(doomed), BATCH):
            with conn:
                conn.executemany(
                    "DELETE FROM snaps WHERE step_id = ? AND state_key = ? AND snap_epoch = ?",
                    doomed[i : i + BATCH],
                )
        return len(doomed)
    finally:
        conn.close()


def compact(recovery_dir: Path) -> int:
    """Compact every partition of `recovery_dir`; returns the rows deleted."""
    return sum(compact_partition(p) for p in partition_files(Path(recovery_dir)))
