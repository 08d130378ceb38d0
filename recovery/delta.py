"""Incremental checkpoints: the difference between two sealed partition copies.

A sealed copy (see `recovery.partitions.seal_copy`) holds one ``snaps`` row per
live key. The delta from copy P (previous checkpoint) to copy C is itself a
small SQLite file with:

- ``upserts``: rows of C whose key is new or whose state differs from P (a
  row whose state is unchanged but was re-snapshotted at a later epoch, as
  Bytewax does for every loaded key after a resume, is not repeated: in a
  sealed copy the epoch of the single row below the resume epoch is
  irrelevant, and the logical digest ignores it);
- ``deletes``: keys of P that C no longer has (discarded or compacted keys:
  without these a restore would resurrect them);
- ``parts``, ``exs``, ``fronts``, ``commits``: C's small tables, whole.

`apply_delta` turns P into C (same logical digest), which restore
verifies against the manifest.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DeltaStats", "apply_delta", "make_delta"]

_SMALL_TABLES = {
    "parts": "created_at, part_index, part_count",
    "exs": "created_at, ex_num, worker_count, resume_epoch",
    "fronts": "created_at, ex_num, worker_index, worker_frontier",
    "commits": "created_at, part_index, commit_epoch",
}
_SNAP_COLS = "created_at, step_id, state_key, snap_epoch, ser_change"


@dataclass(frozen=True)
class DeltaStats:
    upserts: int
    deletes: int


def make_delta(prev: Path, cur: Path, out: Path) -> DeltaStats:
    """Write the delta turning sealed copy `prev` into sealed copy `cur` to `out`."""
    out.unlink(missing_ok=True)
    conn = sqlite3.connect(out)
    try:
        conn.execute("PRAGMA page_size = 1024")  # small deltas stay small
        conn.execute("PRAGMA journal_mode = OFF")  # a new scratch file: no journal, no fsync
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("ATTACH DATABASE ? AS c", (f"file:{cur}?mode=ro",))
        conn.execute("ATTACH DATABASE ? AS p", (f"file:{prev}?mode=ro",))
        with conn:
            conn.execute(
                f"""
                CREATE TABLE upserts AS
                SELECT {", ".join("n." + c.strip() for c in _SNAP_COLS.split(","))}
                FROM c.snaps AS n LEFT JOIN p.snaps AS o
                  ON o.step_id = n.step_id AND o.state_key = n.state_key
                WHERE o.step_id IS NULL OR o.ser_change IS NOT n.ser_change
                """
            )
            conn.execute(
                """
                CREATE TABLE deletes AS
                SELECT o.step_id, o.state_key FROM p.snaps AS o
                WHERE NOT EXISTS (SELECT 1 FROM c.snaps AS n
                  WHERE n.step_id = o.step_id AND n.state_key = o.state_key)
                """
            )
            for table, cols in _SMALL_TABLES.items():
                conn.execute(f"CREATE TABLE {table} AS SELECT {cols} FROM c.{table}")
        upserts = conn.execute("SELECT COUNT(*) FROM upserts").fetchone()[0]
        deletes = conn.execute("SELECT COUNT(*) FROM deletes").fetchone()[0]
        conn.execute("DETACH DATABASE c")
        conn.execute("DETACH DATABASE p")
    finally:
        conn.close()
    return DeltaStats(upserts=upserts, deletes=deletes)


def apply_delta(target: Path, delta: Path) -> DeltaStats:
    """Apply `delta` to the partition file `target` in one transaction."""
    conn = sqlite3.connect(target)
    try:
        # restore applies deltas to staged files, fsynced by recovery.swap before they count
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("ATTACH DATABASE ? AS d", (f"file:{delta}?mode=ro",))
        with conn:
            conn.execute(
                "DELETE FROM main.snaps WHERE (step_id, state_key) IN "
                "(SELECT step_id, state_key FROM d.deletes "
                "UNION ALL SELECT step_id, state_key FROM d.upserts)"
            )
            conn.execute(
                f"INSERT INTO main.snaps ({_SNAP_COLS}) SELECT {_SNAP_COLS} FROM d.upserts"
            )
            for table, cols in _SMALL_TABLES.items():
                conn.execute(f"DELETE FROM main.{table}")
                conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM d.{table}")
        upserts = conn.execute("SELECT COUNT(*) FROM d.upserts").fetchone()[0]
        deletes = conn.execute("SELECT COUNT(*) FROM d.deletes").fetchone()[0]
        conn.execute("DETACH DATABASE d")
    finally:
        conn.close()
    return DeltaStats(upserts=upserts, deletes=deletes)
