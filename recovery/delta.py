"""Incremental checkpoints: the difference between two sealed partition states.

A sealed copy (see `recovery.partitions.copy_sealed`) holds one ``snaps`` row per
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

Two ways to compute it: `make_delta` compares two whole sealed copies;
`live_delta` reads only the rows the live partition wrote since P was sealed
(``since <= snap_epoch < epoch``, the keys Bytewax snapshotted in those epochs)
and looks each of them up in P, so its cost is the changed keys, not the
state. `live_delta` is exact only while the live partition's rows below
`since` are still those P was sealed from: the same executions (no restart,
restore or offline rewrite since P; `recovery.checkpoint` checks the ``exs``
rows) and no compaction of a discarded key's rows at or above `since`
(`recovery.compact` invalidates the parent then). Bytewax's own GC keeps, per
key, the newest row at or below its commit epoch, so a key written since P
keeps its newest row in the range.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from recovery.partitions import (
    BUSY_TIMEOUT_MS,
    EPOCH_INDEX,
    Progress,
    SealInfo,
    digest_rows_sum,
    format_digest,
    has_epoch_index,
    progress_rows,
    rows_hash_sum,
    sealable,
    small_tables_sha,
)
from recovery.positions import PositionRows

__all__ = ["DeltaStats", "LiveDelta", "advance_copy", "apply_delta", "live_delta", "make_delta"]

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


@dataclass(frozen=True)
class LiveDelta:
    """What `live_delta` made: counts, the partition's new digest and key count, the
    state bytes per step it added (positive) and removed (negative), and the delta
    itself with what a checkpoint reads back from it."""

    seal: SealInfo
    upserts: int
    deletes: int
    digest: str
    keys: int
    state_bytes: dict[str, int] = field(default_factory=dict)
    data: bytes = b""  # the delta: the bytes of its SQLite file
    progress: Progress = field(default_factory=lambda: ([], []))  # its progress rows (the live ones, frontiers clamped)
    deleted: list[tuple[str, str]] = field(default_factory=list)  # its deleted keys


# Per key whose state changed since the parent: the newest row Bytewax wrote in
# [since, epoch) (its state at `epoch`, NULL = discarded) and the parent's row of the key
# (rowid and state; NULL: a new key), in one lookup of the parent per key (the upserts,
# the deletes, the replaced rows and the cache update all read this temp table, in
# memory). A key whose state is the parent's (re-snapshotted, unchanged) or discarded
# and absent from the parent is no change. The live rows through the epoch index when
# the partition has it (a range of the index), else one scan of the table; never the
# primary-key walk with a lookup per row that SQLite picks for the GROUP BY otherwise.
_CHANGED = """
CREATE TEMP TABLE changed AS
SELECT n.created_at, n.step_id, n.state_key, n.snap_epoch, n.ser_change,
       o.rowid AS old_rowid, o.ser_change AS old_change
FROM (SELECT created_at, step_id, state_key, MAX(snap_epoch) AS snap_epoch, ser_change
      FROM live.snaps {hint} WHERE snap_epoch >= ?1 AND snap_epoch < ?2
      GROUP BY step_id, state_key) AS n
LEFT JOIN p.snaps AS o ON o.step_id = n.step_id AND o.state_key = n.state_key
WHERE CASE WHEN o.rowid IS NULL THEN n.ser_change IS NOT NULL
           ELSE o.ser_change IS NOT n.ser_change END
"""
_LIVE_UPSERTS = f"""
INSERT INTO main.upserts ({_SNAP_COLS})
SELECT {_SNAP_COLS} FROM temp.changed WHERE ser_change IS NOT NULL
"""
_LIVE_DELETES = """
INSERT INTO main.deletes (step_id, state_key)
SELECT step_id, state_key FROM temp.changed WHERE ser_change IS NULL
"""
# The parent's rows the delta replaces or deletes (digest and state bytes to subtract).
_REPLACED = ("(SELECT step_id, state_key, old_change AS ser_change FROM temp.changed "
             "WHERE old_rowid IS NOT NULL)")


_TEMPLATE: list[bytes] = []  # an empty delta (its tables, no rows), serialized
_TEMPLATE_LOCK = threading.Lock()


def _template() -> bytes:
    """The tables of a delta, empty, as the bytes of a SQLite file: every live delta starts
    from a copy of it in memory (no schema written per partition)."""
    with _TEMPLATE_LOCK:
        if not _TEMPLATE:
            conn = sqlite3.connect(":memory:")
            try:
                conn.execute("PRAGMA page_size = 1024")  # small deltas stay small
                conn.execute(f"CREATE TABLE upserts ({_SNAP_COLS})")
                conn.execute("CREATE TABLE deletes (step_id, state_key)")
                for table, cols in _SMALL_TABLES.items():
                    conn.execute(f"CREATE TABLE {table} ({cols})")
                conn.execute("CREATE VIEW snaps AS SELECT * FROM upserts")  # positions read it
                conn.commit()
                _TEMPLATE.append(conn.serialize())
            finally:
                conn.close()
        return _TEMPLATE[0]


def live_delta(
    live: Path,
    parent: Path,
    *,
    since: int,
    epoch: int,
    parent_digest: str,
    parent_keys: int,
    positions: PositionRows | None = None,
) -> LiveDelta:
    """The delta turning sealed copy `parent` (sealed at `since`, digest `parent_digest`,
    `parent_keys` keys) into the live partition `live` sealed at `epoch`, reading only the
    live rows of epochs ``[since, epoch)``; built in memory (`LiveDelta.data`).

    One read transaction on `live`; `recovery.partitions.PartitionError` if its commit
    epoch reached `epoch` (as `copy_sealed`). The small tables are the live ones,
    frontiers clamped to `epoch`. The returned digest is the parent's updated by the
    rows removed and added (the `logical_digest` of the partition once restored).
    `positions` gets the delta's source-position rows. `parent` is only read: once the
    delta is published, `advance_copy` brings it forward by `LiveDelta.data`."""
    conn = sqlite3.connect(":memory:", isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.deserialize(_template())
        conn.execute("PRAGMA temp_store = MEMORY")  # `changed`: no temp file
        conn.execute("ATTACH DATABASE ? AS live", (f"file:{live}?mode=ro",))
        conn.execute("ATTACH DATABASE ? AS p", (f"file:{parent}?mode=ro",))
        conn.execute("BEGIN")
        index, commit = sealable(conn, "live.", live, epoch)
        hint = f"INDEXED BY {EPOCH_INDEX}" if has_epoch_index(conn, "live") else "NOT INDEXED"
        conn.execute(_CHANGED.format(hint=hint), (since, epoch))
        for table, cols in _SMALL_TABLES.items():
            select = cols.replace("worker_frontier", "min(worker_frontier, ?1) AS worker_frontier")
            conn.execute(
                f"INSERT INTO main.{table} ({cols}) SELECT {select} FROM live.{table}",
                (epoch,) if "?1" in select else (),
            )
        conn.execute(_LIVE_UPSERTS)
        conn.execute(_LIVE_DELETES)
        conn.execute("COMMIT")  # the live partition is read: everything else is local
        upserts, replaced = conn.execute(
            "SELECT COUNT(ser_change), COUNT(old_rowid) FROM temp.changed").fetchone()
        deleted = conn.execute("SELECT step_id, state_key FROM deletes").fetchall()
        rows = digest_rows_sum(parent_digest)
        if rows is None:
            raise ValueError(f"{parent}: the parent's digest is of the older kind, not updatable")
        added: dict[str, int] = {}
        removed: dict[str, int] = {}
        rows += rows_hash_sum(conn, "main.upserts", sizes=added) - rows_hash_sum(
            conn, _REPLACED, sizes=removed)
        state_bytes = {step: added.get(step, 0) - removed.get(step, 0)
                       for step in sorted(added.keys() | removed.keys())}
        digest = format_digest(small_tables_sha(conn), rows)
        if positions is not None:
            positions.add(conn, "main.upserts")
        progress = progress_rows(conn)
        data = conn.serialize()
    finally:
        conn.close()  # detaches both partitions
    keys = parent_keys + upserts - replaced
    return LiveDelta(
        seal=SealInfo(index=index, commit_epoch=commit, keys=keys, dropped_rows=0),
        upserts=upserts,
        deletes=len(deleted),
        digest=digest,
        keys=keys,
        state_bytes=state_bytes,
        data=data,
        progress=progress,
        deleted=deleted,
    )


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
    """Apply `delta` to the partition file `target` in one transaction (restore: to staged
    files, which `recovery.swap` fsyncs before they count)."""
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        conn.execute("ATTACH DATABASE ? AS d", (f"file:{delta}?mode=ro",))
        _apply_unsynced(conn, "main", "d")
        upserts = conn.execute("SELECT COUNT(*) FROM d.upserts").fetchone()[0]
        deletes = conn.execute("SELECT COUNT(*) FROM d.deletes").fetchone()[0]
        conn.execute("DETACH DATABASE d")
    finally:
        conn.close()
    return DeltaStats(upserts=upserts, deletes=deletes)


def advance_copy(target: Path, data: bytes) -> None:
    """Apply the delta whose SQLite file is `data` (a `LiveDelta.data`, in memory) to the
    partition file `target` in one transaction, as `apply_delta` does (the checkpoint
    cache: its meta says ``advancing`` meanwhile, so a crash leaves no parent)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.deserialize(data)
        conn.execute("ATTACH DATABASE ? AS target", (str(target),))
        _apply_unsynced(conn, "target", "main")
    finally:
        conn.close()


def _apply_unsynced(conn: sqlite3.Connection, target: str, delta: str) -> None:
    """`_apply` in one transaction of `conn` (autocommit mode), with no fsync and the
    rollback journal of `target` in memory (no journal file per partition): both callers'
    files count only once something else says so (a swap's fsync, the cache meta)."""
    conn.execute(f"PRAGMA {target}.synchronous = OFF")
    conn.execute(f"PRAGMA {target}.journal_mode = MEMORY")
    conn.execute("BEGIN")
    try:
        _apply(conn, target, delta)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _apply(conn: sqlite3.Connection, target: str, delta: str) -> None:
    """The statements of `apply_delta`: the partition under schema `target` brought forward
    by the delta under schema `delta` (inside the caller's transaction)."""
    replaced = (  # by rowid through the primary key: no scan of the partition
        f"SELECT s.rowid FROM (SELECT step_id, state_key FROM {delta}.deletes "
        f"UNION ALL SELECT step_id, state_key FROM {delta}.upserts) AS k "
        f"JOIN {target}.snaps AS s ON s.step_id = k.step_id AND s.state_key = k.state_key")
    conn.execute(f"DELETE FROM {target}.snaps WHERE rowid IN ({replaced})")
    conn.execute(
        f"INSERT INTO {target}.snaps ({_SNAP_COLS}) SELECT {_SNAP_COLS} FROM {delta}.upserts"
    )
    for table, cols in _SMALL_TABLES.items():
        conn.execute(f"DELETE FROM {target}.{table}")
        conn.execute(f"INSERT INTO {target}.{table} ({cols}) SELECT {cols} FROM {delta}.{table}")
