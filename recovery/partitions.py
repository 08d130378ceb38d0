"""Bytewax's SQLite recovery partitions: create, find, copy consistently, digest.

Facts this module relies on (read from Bytewax 0.21.1's queries):

- Each partition ``part-N.sqlite3`` has tables ``parts``, ``exs`` (one row per
  execution: worker count and the epoch it resumed from), ``fronts`` (per
  execution and worker, the frontier: every epoch below it is durable),
  ``commits`` (the partition's commit epoch: superseded snapshots at or below
  it were garbage-collected) and ``snaps(step_id, state_key, snap_epoch,
  ser_change)``; WAL mode.
- Resume epoch = over the latest execution, for each worker the max of its
  explicit frontier and the execution's resume epoch, then the min over
  workers. ``exs``/``fronts`` rows live in whichever partition they route to,
  so the epoch is computed over all partitions together.
- On resume, a step's state for a key is the row with the greatest
  ``snap_epoch`` below the resume epoch (NULL ``ser_change`` = discarded key).
- A partition whose ``commit_epoch`` is above the resume epoch raises
  ``InconsistentPartitionsError``.

A checkpoint copy is made consistent by `seal_copy`: given the resume epoch R
read from the live partitions *before* copying (every later copy holds all
snapshots below R), it clamps the frontiers to R, keeps for each key only the
row Bytewax would load at R (dropping discarded keys), and refuses a copy
whose commit epoch reached R (the ``-b`` backup interval was shorter than the
copy took). Bytewax's GC at commit epoch C keeps, per key, only the newest
snapshot at or below C, so at C >= R the rows below R of every key
re-snapshotted at R are gone: sealing would delete those keys (DESIGN.md §10).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DIGEST_PREFIX",
    "EPOCH_INDEX",
    "PartitionError",
    "SealInfo",
    "add_epoch_index",
    "connect",
    "copy_partition",
    "copy_sealed",
    "digest_matches",
    "digest_rows_sum",
    "format_digest",
    "has_epoch_index",
    "init_partitions",
    "legacy_digest",
    "logical_digest",
    "Progress",
    "part_index",
    "partition_files",
    "progress_rows",
    "resume_epoch",
    "resume_epoch_of",
    "row_hash",
    "rows_hash_sum",
    "seal_copy",
    "sealable",
    "small_tables_sha",
]

_PART_RE = re.compile(r"^part-(\d+)\.sqlite3$")
BUSY_TIMEOUT_MS = 5000


class PartitionError(Exception):
    """A recovery partition is missing, unreadable or inconsistent."""


def part_index(path: Path) -> int:
    """The partition index in a ``part-N.sqlite3`` file name."""
    m = _PART_RE.match(path.name)
    if not m:
        raise PartitionError(f"{path} is not a recovery partition file")
    return int(m.group(1))


def partition_files(recovery_dir: Path) -> list[Path]:
    """The ``part-N.sqlite3`` files of `recovery_dir`, by index."""
    recovery_dir = Path(recovery_dir)
    if not recovery_dir.is_dir():
        return []
    files = [p for p in recovery_dir.iterdir() if _PART_RE.match(p.name)]
    return sorted(files, key=part_index)


def init_partitions(recovery_dir: Path, count: int) -> bool:
    """Create `count` empty partitions if the directory has none; True if created."""
    recovery_dir = Path(recovery_dir)
    existing = partition_files(recovery_dir)
    if existing:
        if len(existing) != count:
            raise PartitionError(
                f"{recovery_dir} has {len(existing)} partitions, config says {count}; "
                "the partition count is fixed when the directory is created"
            )
        return False
    recovery_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(recovery_dir), str(count)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise PartitionError(f"bytewax.recovery init failed: {proc.stderr.strip()[-500:]}")
    for path in partition_files(recovery_dir):
        add_epoch_index(path)
    return True


EPOCH_INDEX = "sf_snaps_epoch"


def add_epoch_index(path: Path) -> None:
    """Index ``snaps`` by ``snap_epoch`` (before any flow runs on the partition): an
    incremental checkpoint then reads the rows written since its parent without scanning
    the table (`recovery.delta.live_delta`). Bytewax 0.21.1 names its tables and indexes
    and never lists them, so an extra index is invisible to it (its loader's query plan
    stays the same: docs/operations.md); copies keep it (`copy_sealed`)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"CREATE INDEX IF NOT EXISTS {EPOCH_INDEX} ON snaps (snap_epoch)")
        conn.commit()
    finally:
        conn.close()


def has_epoch_index(conn: sqlite3.Connection, schema: str = "main") -> bool:
    return conn.execute(
        f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'index' AND name = ?", (EPOCH_INDEX,)
    ).fetchone() is not None


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open a partition with a busy timeout (Bytewax may be writing to it)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    else:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


Progress = tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]


def progress_rows(conn: sqlite3.Connection) -> Progress:
    """A partition's ``exs`` (ex_num, worker_count, resume_epoch) and ``fronts`` (ex_num,
    worker_index, worker_frontier) rows."""
    exs = conn.execute("SELECT ex_num, worker_count, resume_epoch FROM exs").fetchall()
    fronts = conn.execute("SELECT ex_num, worker_index, worker_frontier FROM fronts").fetchall()
    return exs, fronts


def resume_epoch(conns: Iterable[sqlite3.Connection]) -> int | None:
    """Bytewax's resume epoch over these partitions; None if no execution ran yet."""
    return resume_epoch_of([progress_rows(c) for c in conns])


def resume_epoch_of(progress: Iterable[Progress]) -> int | None:
    """Bytewax's resume epoch over these partitions' `progress_rows`; None if no execution
    ran yet."""
    exs: list[tuple[int, int, int]] = []
    fronts: list[tuple[int, int, int]] = []
    for e, f in progress:
        exs += e
        fronts += f
    if not exs:
        return None
    ex_num, worker_count, default = max(exs)
    frontier = dict.fromkeys(range(worker_count), default)
    for ex, worker, value in fronts:
        if ex == ex_num and worker in frontier:
            frontier[worker] = max(frontier[worker], value)
    return min(frontier.values())


def copy_partition(src: Path, dst: Path) -> None:
    """Online-consistent copy with SQLite's backup API (never a file copy)."""
    dst.unlink(missing_ok=True)
    source = connect(src, readonly=True)
    target = sqlite3.connect(dst)
    try:
        target.execute("PRAGMA synchronous = OFF")  # a scratch copy: never fsynced (DESIGN §10)
        source.backup(target)
        target.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.Error as exc:
        raise PartitionError(f"cannot copy {src}: {exc}") from None
    finally:
        target.close()
        source.close()


@dataclass(frozen=True)
class SealInfo:
    """What `seal_copy` found in one copied partition: its index and commit epoch, the
    keys it kept (one row each), the rows it dropped and the state bytes per step of
    the kept rows (what `rows_hash_sum` sums: a step whose rows are all NULL is absent;
    None: not read, as for a live delta's)."""

    index: int
    commit_epoch: int | None
    keys: int
    dropped_rows: int
    state_bytes: dict[str, int] | None = None


def _refuse_committed(index: int, commit: int | None, epoch: int | None) -> None:
    if epoch is not None and commit is not None and commit >= epoch:
        raise PartitionError(
            f"partition {index} committed epoch {commit} while it was copied, which "
            f"reached the consistent epoch {epoch} (its older snapshots are garbage-"
            "collected); raise recovery.backup-interval above checkpoints.timeout"
        )


def sealable(conn: sqlite3.Connection, schema: str, path: Path, epoch: int | None) -> tuple[int, int | None]:
    """The partition's index and commit epoch (tables under `schema`, "" or "live."); raises
    PartitionError if it is not initialised or its commit epoch reached `epoch`."""
    index = conn.execute(f"SELECT part_index FROM {schema}parts").fetchone()
    if index is None:
        raise PartitionError(f"{path}: no parts row; not an initialised partition")
    row = conn.execute(f"SELECT commit_epoch FROM {schema}commits").fetchone()
    commit = row[0] if row else None
    _refuse_committed(index[0], commit, epoch)
    return index[0], commit


# Every row of a key but its newest, in a partition with no commit row yet: keys with more
# than one row are found in the primary key's index alone (a covering scan, no table row
# read), their older rows by rowid.
_SUPERSEDED = """
DELETE FROM snaps WHERE rowid IN (
  SELECT s.rowid FROM (SELECT step_id, state_key, MAX(snap_epoch) AS newest FROM snaps
                       GROUP BY step_id, state_key HAVING COUNT(*) > 1) AS k
  JOIN snaps AS s ON s.step_id = k.step_id AND s.state_key = k.state_key
   AND s.snap_epoch < k.newest)
"""
# The same at commit epoch ?1. Bytewax's commit upserts `commits` and deletes, in the same
# transaction, every row of a key older than its newest at or below the commit epoch
# (`RecoveryCommitter::commit`, src/recovery.rs of 0.21.1), so a consistent copy holds one
# row per key at or below it, and a superseded row always has a newer row *above* it: the
# rows written since the commit (a range of the epoch index) and a primary-key lookup each,
# not a walk of every key (3.7 ms -> 0.2 ms per partition of 4k keys).
_SUPERSEDED_SINCE = """
DELETE FROM snaps WHERE rowid IN (
  SELECT s.rowid FROM snaps AS n
  JOIN snaps AS s ON s.step_id = n.step_id AND s.state_key = n.state_key
   AND s.snap_epoch < n.snap_epoch
  WHERE n.snap_epoch > ?1)
"""
# One pass over the kept rows: per step the rows, the NULL rows and the state bytes.
_STEP_ROWS = ("SELECT step_id, COUNT(*), COUNT(*) - COUNT(ser_change), SUM(LENGTH(ser_change)) "
              "FROM snaps GROUP BY step_id")


# A partition up to this size (file + WAL) is copied and sealed in memory; a larger one on
# disk, so that the checkpoint's jobs hold at most a few of these in memory at once.
IN_MEMORY_MAX_BYTES = 64 * 1024 * 1024


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # absent (the copy then fails with a PartitionError) or just checkpointed
        return 0


def copy_sealed(src: Path, dst: Path, epoch: int | None) -> SealInfo:
    """`copy_partition` + `seal_copy`. Up to `IN_MEMORY_MAX_BYTES`, in memory: the backup
    API copies the pages into an in-memory database, the seal runs there and the result
    is written to `dst` in one write (half the CPU of a page-by-page copy to a file, which
    the seal then rewrites)."""
    if _file_bytes(src) + _file_bytes(src.with_name(src.name + "-wal")) > IN_MEMORY_MAX_BYTES:
        copy_partition(src, dst)
        return seal_copy(dst, epoch, source=src)
    dst.unlink(missing_ok=True)
    source = connect(src, readonly=True)
    target = sqlite3.connect(":memory:", isolation_level=None)
    try:
        try:
            source.backup(target)
        except sqlite3.Error as exc:
            raise PartitionError(f"cannot copy {src}: {exc}") from None
        finally:
            source.close()
        info = _seal(target, epoch, src)
        data = target.serialize()
    finally:
        target.close()
    dst.write_bytes(data)
    return info


def seal_copy(path: Path, epoch: int | None, *, source: Path | None = None) -> SealInfo:
    """Make a copied partition resume exactly at `epoch` with one row per live key.

    In the copy (a page copy of one consistent snapshot: Bytewax's schema, ``user_version``
    and indexes included) the frontiers are clamped to `epoch` and only the rows a resume
    at `epoch` does not load are deleted: those at or above `epoch` (a range of the
    ``snap_epoch`` index), every row of a key but its newest (`_SUPERSEDED_SINCE`) and
    discarded keys' NULL rows (when the pass that sums the state bytes found any). No row
    is rewritten; freed space is zeroed (``secure_delete``): it compresses away.

    Raises PartitionError if the copy's commit epoch is at or above `epoch` (its GC
    already dropped rows the resume at `epoch` needs), naming `source` (default `path`).
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # a scratch copy, as in copy_partition
        return _seal(conn, epoch, source or path)
    finally:
        conn.close()


def _seal(conn: sqlite3.Connection, epoch: int | None, source: Path) -> SealInfo:
    """`seal_copy` on an open copy (autocommit mode); errors name `source`."""
    try:
        conn.execute("PRAGMA journal_mode = OFF")  # a failed seal discards the copy
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("BEGIN")
        index, commit = sealable(conn, "", source, epoch)
        if epoch is not None:
            conn.execute(
                "UPDATE fronts SET worker_frontier = ?1 WHERE worker_frontier > ?1", (epoch,)
            )
        before = conn.total_changes
        if epoch is not None:
            conn.execute("DELETE FROM snaps WHERE snap_epoch >= ?", (epoch,))
        if commit is None:
            conn.execute(_SUPERSEDED)
        else:
            conn.execute(_SUPERSEDED_SINCE, (commit,))
        steps = conn.execute(_STEP_ROWS).fetchall()
        if any(nulls for _, _, nulls, _ in steps):
            conn.execute("DELETE FROM snaps WHERE ser_change IS NULL")
        conn.execute("COMMIT")
        dropped = conn.total_changes - before
    except sqlite3.Error as exc:
        raise PartitionError(f"cannot seal {source}: {exc}") from None
    return SealInfo(index=index, commit_epoch=commit, keys=sum(n - z for _, n, z, _ in steps),
                    dropped_rows=dropped,
                    state_bytes={step: size for step, n, z, size in steps if n > z})


def _frame(*fields: object) -> bytes:
    return "\x1f".join("" if f is None else str(f) for f in fields).encode() + b"\x1e"


_SMALL_ROWS = (
    "SELECT part_index, part_count FROM parts ORDER BY part_index",
    "SELECT ex_num, worker_count, resume_epoch FROM exs ORDER BY ex_num",
    "SELECT ex_num, worker_index, worker_frontier FROM fronts ORDER BY 1, 2",
    "SELECT part_index, commit_epoch FROM commits ORDER BY part_index",
)
# One row of `snaps` (or of a delta's ``upserts``) as digest input, framed by SQLite:
# step id, state key, state length (-1 = NULL), then the state bytes. Epochs are left out.
_ROW_FRAME = (
    "CAST(step_id || char(31) || state_key || char(31) || "
    "coalesce(length(ser_change), -1) || char(30) AS BLOB)"
)
DIGEST_PREFIX = "ms1:"
_MOD = 1 << 256


def _hash_small_tables(h: hashlib._Hash, conn: sqlite3.Connection) -> None:
    for sql in _SMALL_ROWS:
        h.update(sql.encode())
        for row in conn.execute(sql):
            h.update(_frame(*row))


def small_tables_sha(conn: sqlite3.Connection) -> str:
    """sha256 of the partition's small tables (parts, exs, fronts, commits), in order."""
    h = hashlib.sha256()
    _hash_small_tables(h, conn)
    return h.hexdigest()


def row_hash(frame: bytes, ser_change: bytes | None) -> int:
    """The 256-bit hash of one framed row (see `_ROW_FRAME`); a multiset digest adds them."""
    digest = hashlib.blake2b(frame, digest_size=32)
    if ser_change is not None:
        digest.update(ser_change)
    return int.from_bytes(digest.digest(), "little")


def rows_hash_sum(
    conn: sqlite3.Connection,
    source: str,
    params: tuple[object, ...] = (),
    sizes: dict[str, int] | None = None,
) -> int:
    """Sum (mod 2**256) of `row_hash` over the rows of `source` (a table or a FROM clause
    whose rows have step_id, state_key and ser_change); with `sizes`, the state bytes of
    those rows are added to it per step id in the same pass (a step whose rows are all
    NULL adds 0, as ``SUM(LENGTH(ser_change))`` would)."""
    conn.text_factory = bytes
    try:
        total = 0
        if sizes is None:
            for frame, blob in conn.execute(f"SELECT {_ROW_FRAME}, ser_change FROM {source}",
                                            params):
                total += row_hash(frame, blob)
            return total % _MOD
        for step, frame, blob in conn.execute(
            f"SELECT step_id, {_ROW_FRAME}, ser_change FROM {source}", params
        ):
            total += row_hash(frame, blob)
            name = step.decode()
            sizes[name] = sizes.get(name, 0) + (0 if blob is None else len(blob))
        return total % _MOD
    finally:
        conn.text_factory = str


def format_digest(small_sha: str, rows_sum: int) -> str:
    return f"{DIGEST_PREFIX}{small_sha}:{rows_sum % _MOD:064x}"


def digest_rows_sum(digest: str) -> int | None:
    """The rows part of a `logical_digest`; None for a digest of the older (ordered) kind."""
    if not digest.startswith(DIGEST_PREFIX):
        return None
    return int(digest.rsplit(":", 1)[1], 16)


def logical_digest(path: Path, sizes: dict[str, int] | None = None) -> str:
    """Digest of a partition's rows (not its page layout), for verification; with
    `sizes`, the partition's state bytes per step id are added to it in the same pass.

    ``ms1:<sha256 of the small tables>:<sum of row hashes>``: the rows part is a
    multiset hash (the sum mod 2**256 of a 256-bit BLAKE2b per ``snaps`` row), so it
    does not depend on row order and an incremental checkpoint updates it from the
    parent's by the rows its delta removes and adds (`recovery.delta.live_delta`)
    instead of reading the whole state again. Snapshot epochs are left out: in a
    sealed copy (one row per key, all below the resume epoch) they do not change
    what Bytewax loads.
    """
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return format_digest(small_tables_sha(conn), rows_hash_sum(conn, "snaps", sizes=sizes))
    finally:
        conn.close()


def legacy_digest(path: Path) -> str:
    """The ordered sha256 digest checkpoints written before ``ms1:`` digests carry."""
    h = hashlib.sha256()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        _hash_small_tables(h, conn)
        h.update(b"snaps")
        conn.text_factory = bytes  # the frame is built by SQLite, byte-identical to _frame
        update = h.update
        for frame, blob in conn.execute(
            f"SELECT {_ROW_FRAME}, ser_change FROM snaps ORDER BY step_id, state_key, snap_epoch"
        ):
            update(frame)
            if blob is not None:
                update(blob)
    finally:
        conn.close()
    return h.hexdigest()


def digest_matches(path: Path, expected: str) -> bool:
    """True if the partition at `path` has the digest `expected` (either kind)."""
    if expected.startswith(DIGEST_PREFIX):
        return logical_digest(path) == expected
    return legacy_digest(path) == expected
