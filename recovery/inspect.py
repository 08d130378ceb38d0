"""Inspect recovery partitions: steps, keys, bytes, epochs (JSON-able)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recovery.partitions import connect, partition_files, resume_epoch
from recovery.positions import is_operator_step

__all__ = ["inspect_partitions"]

_BY_STEP = """
SELECT step_id, COUNT(*), SUM(ser_change IS NULL), COALESCE(SUM(LENGTH(ser_change)), 0)
FROM snaps GROUP BY step_id
"""
_LIVE_BY_STEP = """
SELECT s.step_id, COUNT(*), COALESCE(SUM(LENGTH(s.ser_change)), 0) FROM snaps AS s
WHERE s.ser_change IS NOT NULL AND NOT EXISTS (
  SELECT 1 FROM snaps AS n WHERE n.step_id = s.step_id AND n.state_key = s.state_key
  AND n.snap_epoch > s.snap_epoch)
GROUP BY s.step_id
"""


def _partition(path: Path, steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    conn = connect(path, readonly=True)
    try:
        index, count = conn.execute("SELECT part_index, part_count FROM parts").fetchone()
        commit = conn.execute("SELECT commit_epoch FROM commits").fetchone()
        rows, nulls, lo, hi = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(ser_change IS NULL), 0), MIN(snap_epoch), MAX(snap_epoch) "
            "FROM snaps"
        ).fetchone()
        for step_id, n, null_rows, nbytes in conn.execute(_BY_STEP):
            s = steps.setdefault(
                step_id,
                {
                    "operator": is_operator_step(step_id),
                    "keys": 0,
                    "rows": 0,
                    "null_rows": 0,
                    "bytes": 0,
                    "live_bytes": 0,
                },
            )
            s["rows"] += n
            s["null_rows"] += null_rows
            s["bytes"] += nbytes
        for step_id, keys, live_bytes in conn.execute(_LIVE_BY_STEP):
            steps[step_id]["keys"] += keys
            steps[step_id]["live_bytes"] += live_bytes
    finally:
        conn.close()
    return {
        "index": index,
        "part_count": count,
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "commit_epoch": commit[0] if commit else None,
        "rows": rows,
        "null_rows": nulls,
        "min_snap_epoch": lo,
        "max_snap_epoch": hi,
    }


def inspect_partitions(recovery_dir: Path) -> dict[str, Any]:
    """Summary of a recovery directory; `steps[step_id]` has keys (live), rows, bytes."""
    files = partition_files(Path(recovery_dir))
    steps: dict[str, dict[str, Any]] = {}
    parts = [_partition(p, steps) for p in files]
    conns = [connect(p, readonly=True) for p in files]
    try:
        epoch = resume_epoch(conns)
        executions = sorted(
            {
                row
                for c in conns
                for row in c.execute("SELECT ex_num, worker_count, resume_epoch FROM exs")
            }
        )
    finally:
        for c in conns:
            c.close()
    return {
        "recovery_dir": str(recovery_dir),
        "partition_count": len(files),
        "resume_epoch": epoch,
        "executions": [
            {"ex_num": e, "worker_count": w, "resume_epoch": r} for e, w, r in executions
        ],
        "partitions": parts,
        "steps": dict(sorted(steps.items())),
        "totals": {
            "rows": sum(p["rows"] for p in parts),
            "null_rows": sum(p["null_rows"] for p in parts),
            "keys": sum(s["keys"] for s in steps.values()),
            "bytes": sum(s["bytes"] for s in steps.values()),
            "file_bytes": sum(p["file_bytes"] for p in parts),
        },
    }
