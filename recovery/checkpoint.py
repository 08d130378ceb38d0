"""Checkpoints: a consistent online copy of every partition, uploaded, manifest last.

`take_checkpoint` (the supervisor calls it every ``checkpoints.interval``,
applying timeout / min-pause / retained itself):

1. reads the resume epoch R from the live partitions;
2. copies each partition in one consistent read and seals the copy at R
   (`recovery.partitions.copy_sealed`: the backup API's page copy, then only the
   rows a resume at R does not load deleted): every copy then resumes at R, with
   one row per live key;
3. packs every copy (full), or, when `incremental` and the previous
   checkpoint's sealed copies are in the local cache, only the delta since it
   (`recovery.delta`), zstd-compressed into a few objects (`recovery.pack`,
   an index of offset/size/sha256 per partition in the manifest) and uploads
   them multipart (`recovery.transfer`); a full base every `full_every`.
   While the flow has not (re)started since the parent (same ``exs`` rows),
   steps 2-3 read only the live rows written since the parent's epoch
   (`recovery.delta.live_delta`: no copy of the state, the digest updated
   from the parent's) and the cached copies are brought forward by the
   deltas; after a restart (Bytewax then re-snapshots every key) the delta
   compares whole sealed copies (`make_delta`). A live delta is built in memory;
   the cached copies stay the parent's until the manifest is published (a
   checkpoint that fails leaves its parent for the next), then a background
   thread brings them forward by the deltas (`_advance_cache`);
4. uploads the manifest (sha256 of every object, logical digest of every
   partition, source positions, state size per step), signed when a key is
   given, LAST: a checkpoint without a manifest is never chosen. A full
   checkpoint's partitions record `recovery.pack.FRAME_DIGEST` (manifest format
   2: restore checks the frame's sha256 and content checksum) and no row is
   hashed before publishing; the `ms1:` digests a live delta updates are computed
   from the cached copies afterwards, in a background thread (`_digest_cache`).
   Either background thread holds the cache's lock (`recovery.lease.CacheLock`,
   handed over by the checkpoint) until it has written the cache meta: the next
   checkpoint of any process waits for it (`await_cache` in this one);
5. records the checkpoint metrics.

One checkpoint at a time per pipeline (`recovery.lease`): a checkpoint (not a
savepoint: those never delta and are never touched by checkpoint retention)
holds the file lock of the recovery directory and the store lease for its whole
run, names its id and parent chain in the lease before uploading, and publishes
only while the lease is still its own. A delta is chained only onto a parent
whose objects (and its chain's) all exist in the store, checked when the parent
is chosen and again right before publishing; if one is gone the checkpoint is
re-uploaded full. Retention never deletes the snapshot (or the chain) a live
lease names.

A failure raises `CheckpointError` (`CheckpointTimeout` past `timeout_s`) or
`recovery.store.StoreError` (the store failed after its retries); nothing is
published then (no manifest). The supervisor counts it in ``CHECKPOINT_FAILURES`` and carries on. The
cache of sealed copies lives next to the recovery directory
(``<recovery_dir>.checkpoint-cache``), never inside it.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from dataflows import metrics
from dataflows.faults import fault_point
from recovery.delta import LiveDelta, advance_copy, live_delta, make_delta
from recovery.lease import CacheLock, CheckpointBusy, StoreLease, live_lease, local_lock
from recovery.manifest import (
    Kind,
    Manifest,
    ManifestError,
    PartitionEntry,
    manifest_key,
    new_id,
    scan,
    snapshot_prefix,
)
from recovery.pack import (
    CODEC,
    FRAME_DIGEST,
    Chunk,
    PackWriter,
    compress,
    compress_bytes,
    pack_key,
)
from recovery.partitions import (
    PartitionError,
    Progress,
    SealInfo,
    connect,
    copy_sealed,
    digest_rows_sum,
    logical_digest,
    part_index,
    partition_files,
    progress_rows,
    resume_epoch_of,
)
from recovery.positions import PositionRows
from recovery.store import ObjectStore, StoreError
from recovery.transfer import put_file

__all__ = [
    "CACHE_META",
    "CheckpointError",
    "CheckpointTimeout",
    "Deadline",
    "apply_retention",
    "await_cache",
    "default_cache_dir",
    "delete_snapshot",
    "list_checkpoints",
    "record_completed",
    "take_checkpoint",
    "upload_copies",
]

CACHE_META = "cache.json"


class CheckpointError(Exception):
    """A checkpoint or savepoint could not be taken (nothing was published)."""


class CheckpointTimeout(CheckpointError):
    """The checkpoint took longer than its timeout."""


_LEASE_MARGIN_S = 60.0
_WORKERS = 4  # partitions copied (or read for a delta) at once
# live deltas read at once: their jobs are ~40 small statements each, mostly Python glue
# around short SQLite calls, so more threads only contend for the GIL (bench/checkpoint.py
# at 1M keys: 1 thread 1.01-1.24 s and 1.0-1.23 CPU-s, 4 threads 1.29-1.37 s and 1.45-1.55)
_DELTA_WORKERS = 1
_UNBOUNDED_WAIT_S = 600.0


def default_cache_dir(recovery_dir: Path) -> Path:
    return Path(f"{Path(recovery_dir).absolute()}.checkpoint-cache")


@dataclass(frozen=True)
class _Parent:
    id: str
    chain: list[str]
    dir: Path
    # what a delta read from the live partitions needs (`_live_deltas`); None in a
    # cache written before them
    epoch: int | None = None
    executions: list[list[int]] | None = None
    manifest: Manifest | None = None
    # the `ms1:` digest of every cached copy, by partition index: the manifest's, or for
    # a full (`FRAME_DIGEST` entries) those `_digest_cache` computed after publishing it
    digests: dict[int, str] = field(default_factory=dict)


def _executions(progress: Iterable[Progress]) -> list[list[int]]:
    """Every ``exs`` row (ex_num, worker_count, resume_epoch) of these partitions' progress
    rows, sorted: a new row means the flow (re)started, from these partitions or others."""
    rows = {tuple(r) for exs, _ in progress for r in exs}
    return [list(r) for r in sorted(rows)]


def _progress(path: Path) -> Progress:
    conn = connect(path, readonly=True)
    try:
        return progress_rows(conn)
    finally:
        conn.close()


class Deadline:
    """The end of a checkpoint's `timeout_s` (None: unbounded); `check` raises
    `CheckpointTimeout` past it."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self.end = None if timeout_s is None else time.monotonic() + timeout_s

    def check(self, what: str) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise CheckpointTimeout(f"checkpoint timed out after {self.timeout_s}s ({what})")

    def left(self) -> float:
        return _UNBOUNDED_WAIT_S if self.end is None else max(0.0, self.end - time.monotonic())


class _Pool(ThreadPoolExecutor):
    """A thread pool whose queued work is cancelled when its block raises (a timeout or a
    refused copy stops the checkpoint without finishing every other partition first)."""

    def __init__(self, workers: int) -> None:
        super().__init__(max_workers=workers)

    def __exit__(self, exc_type: object, *rest: object) -> None:  # type: ignore[override]
        self.shutdown(wait=True, cancel_futures=exc_type is not None)


@dataclass(frozen=True)
class _Live:
    """The live partitions, their resume epoch and their executions (`_live_state`)."""

    files: list[Path]
    epoch: int | None
    executions: list[list[int]]


def _live_state(recovery_dir: Path) -> _Live:
    """The live partitions, their resume epoch and their executions: one read of every
    partition's progress rows, which the checkpoint's copies or deltas then use (a
    partition file is opened once more, by its job)."""
    files = partition_files(recovery_dir)
    if not files:
        raise CheckpointError(f"{recovery_dir}: no recovery partitions to checkpoint")
    progress = [_progress(f) for f in files]
    return _Live(files, resume_epoch_of(progress), _executions(progress))


def _check_sealed(progress: list[Progress], epoch: int | None) -> None:
    """CheckpointError unless the copies (or deltas) with these `progress_rows` resume at
    `epoch`."""
    sealed = resume_epoch_of(progress)
    if sealed != epoch:
        raise CheckpointError(
            f"the flow (re)started while the partitions were copied (epoch {epoch} -> {sealed}); "
            "nothing published, the next checkpoint will be consistent"
        )


@dataclass(frozen=True)
class _Prepared:
    """A sealed copy, packed: its chunk (the copy, or its delta against the parent,
    compressed) and what its manifest entry records (the copy's digest, keys, commit
    epoch; its progress rows), and what the manifest gathers over every copy (its
    source-position rows, its state bytes per step), read in the same job."""

    copy: Path
    digest: str
    keys: int
    commit_epoch: int | None
    progress: Progress
    chunk: Chunk
    positions: PositionRows
    state_bytes: dict[str, int]


def _prepare(copy: Path, parent: _Parent | None, work: Path, writer: PackWriter,
             seal: SealInfo | None = None, input_steps: Iterable[str] | None = None,
             frame_digest: bool = False) -> _Prepared:
    """`copy` (or its delta against `parent`) compressed into `writer`'s pack, and its
    logical digest (state bytes per step summed in the same pass over the rows) and
    source-position rows; its key count and commit epoch from `seal` (what
    `copy_sealed` found) or read from the copy.

    `frame_digest` (a full copy only): no pass over the rows in Python; the entry's
    digest is `FRAME_DIGEST` (restore checks the frame's sha256 and content checksum)
    and the state bytes are the ones `seal` summed."""
    assert not (frame_digest and parent is not None)
    assert not frame_digest or (seal is not None and seal.state_bytes is not None)
    source = copy if parent is None else _delta_file(copy, parent, work)
    positions = PositionRows(input_steps)
    sizes: dict[str, int] = {}
    conn = connect(copy, readonly=True)
    try:
        progress = progress_rows(conn)
        positions.add(conn)
        if frame_digest and seal is not None and seal.state_bytes is not None:
            sizes = dict(seal.state_bytes)
        if seal is None:
            keys = conn.execute("SELECT COUNT(*) FROM snaps").fetchone()[0]
            row = conn.execute("SELECT commit_epoch FROM commits").fetchone()
            commit = row[0] if row else None
        else:
            keys, commit = seal.keys, seal.commit_epoch
    finally:
        conn.close()
    chunk = writer.add(part_index(copy), compress(source))
    if source != copy:
        source.unlink()
    digest = FRAME_DIGEST if frame_digest else logical_digest(copy, sizes)
    return _Prepared(copy, digest, keys, commit, progress, chunk, positions, sizes)



def _copy_and_prepare(src: Path, dst: Path, epoch: int | None, parent: _Parent | None,
                      work: Path, writer: PackWriter, input_steps: Iterable[str] | None
                      ) -> _Prepared:
    return _prepare(dst, parent, work, writer, copy_sealed(src, dst, epoch), input_steps,
                    frame_digest=parent is None)


def _sealed_copies(
    live: _Live, parent: _Parent | None, work: Path, deadline: Deadline,
    input_steps: Iterable[str] | None = None,
) -> tuple[list[_Prepared], list[Path], int | None]:
    """Every live partition copied and sealed at the resume epoch `live` read
    (`copy_sealed`: only the kept rows), then its delta against `parent`, its digest and
    its packed frame, `_WORKERS` partitions at a time (SQLite, zstd and hashlib run
    without the GIL: a copy overlaps another's digest); the packs, the epoch."""
    files, epoch = live.files, live.epoch
    writer = PackWriter(work)
    prepared, packs = _jobs(
        files, lambda f: _copy_and_prepare(f, work / f.name, epoch, parent, work, writer,
                                           input_steps),
        writer, deadline, "copying")
    _check_sealed([p.progress for p in prepared], epoch)
    return prepared, packs, epoch


T = TypeVar("T")


def _jobs(files: list[Path], job: Callable[[Path], T], writer: PackWriter, deadline: Deadline,
          doing: str, workers: int = _WORKERS) -> tuple[list[T], list[Path]]:
    """`job` of every partition file, `workers` at a time (SQLite, zstd and hashlib run
    without the GIL), in order, with the ``checkpoint.copy`` fault point and the deadline
    checked after each; then `writer`'s packs are closed: the results, the pack files."""
    results = []
    try:
        with _Pool(workers) as pool:
            futures = [pool.submit(job, f) for f in files]
            for f, future in zip(files, futures, strict=True):
                results.append(future.result())
                fault_point("checkpoint.copy")
                deadline.check(f"{doing} {f.name}")
    finally:
        packs = writer.close()
    return results, packs


def _load_parent(cache_dir: Path, store: ObjectStore, pipeline: str, count: int) -> _Parent | None:
    try:
        meta = json.loads((cache_dir / CACHE_META).read_text())
    except (OSError, ValueError):
        return None
    current = cache_dir / "current"
    if (
        meta.get("advancing")  # the process ended while bringing the copies forward
        or meta.get("store") != store.url
        or meta.get("pipeline") != pipeline
        or len(partition_files(current)) != count
    ):
        return None
    try:
        manifest = manifest_or_error(store, pipeline, "checkpoint", meta["id"])
    except ManifestError:
        return None
    digests = {e.index: e.digest for e in manifest.partitions}
    digests.update({int(i): d for i, d in dict(meta.get("digests") or {}).items()})
    parent = _Parent(id=meta["id"], chain=list(meta.get("chain", [])), dir=current,
                     epoch=meta.get("epoch"), executions=meta.get("executions"),
                     manifest=manifest, digests=digests)
    return parent if _chain_intact(store, pipeline, parent) else None


def _chain_intact(store: ObjectStore, pipeline: str, parent: _Parent) -> bool:
    """True if the parent's manifest and every object of it and its chain exist."""
    for snap_id in [*parent.chain, parent.id]:
        try:
            manifest = manifest_or_error(store, pipeline, "checkpoint", snap_id)
        except ManifestError:
            return False
        if not all(store.exists(o) for o in sorted({e.object for e in manifest.partitions})):
            return False
    return True


def _save_parent(
    cache_dir: Path,
    work: Path,
    manifest: Manifest,
    store: ObjectStore,
    executions: list[list[int]],
    lock: CacheLock,
    deltas: list[tuple[str, bytes]] | None = None,
) -> None:
    """Make the published `manifest` the cached parent: the sealed copies in `work` become
    the cache, or (`deltas`: the live deltas' partition file names and data) the cached
    copies are brought forward by them in the background (`_advance_cache`). The meta goes
    last, so an interrupted update leaves no parent (the next checkpoint is full); while
    the copies are brought forward it is marked ``advancing`` (not a parent, but its epoch
    is the floor of `recovery.compact`'s NULL-row deletes). A full's
    digest of the copies (`_digest_cache`) is started in the background. A background
    thread gets `lock` (the cache's, held by the caller), handed over."""
    meta = {
        "id": manifest.id,
        "chain": manifest.chain,
        "store": store.url,
        "pipeline": manifest.pipeline,
        "epoch": manifest.epoch,
        "executions": executions,
    }
    if deltas is not None:  # the new epoch stays visible to `recovery.compact` meanwhile
        _write_meta(cache_dir, {**meta, "advancing": True})
        _in_background(cache_dir, f"checkpoint-cache-{manifest.id}", _advance_cache,
                       (cache_dir, meta, deltas, lock.hand_over()))
        return
    (cache_dir / CACHE_META).unlink(missing_ok=True)
    current = cache_dir / "current"
    shutil.rmtree(current, ignore_errors=True)
    current.mkdir(parents=True)
    for f in partition_files(work):
        f.replace(current / f.name)
    _write_meta(cache_dir, meta)
    if any(e.digest == FRAME_DIGEST for e in manifest.partitions):
        _in_background(cache_dir, f"checkpoint-digest-{manifest.id}", _digest_cache,
                       (cache_dir, manifest.id, lock.hand_over()))


def _write_meta(cache_dir: Path, meta: dict[str, Any]) -> None:
    tmp = cache_dir / f"{CACHE_META}.tmp"
    tmp.write_text(json.dumps(meta))
    tmp.replace(cache_dir / CACHE_META)


# Background work on the cache (`_digest_cache`, `_advance_cache`), by cache directory; a
# checkpoint waits for its cache's (`await_cache`) before it reads or changes the cache.
_BACKGROUND: dict[Path, threading.Thread] = {}
_BACKGROUND_LOCK = threading.Lock()


def _in_background(cache_dir: Path, name: str, target: Callable[..., None],
                   args: tuple[Any, ...]) -> None:
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    with _BACKGROUND_LOCK:
        _BACKGROUND[cache_dir.absolute()] = thread
    thread.start()


def _advance_cache(cache_dir: Path, meta: dict[str, Any], deltas: list[tuple[str, bytes]],
                   lock: CacheLock) -> None:
    """Bring the cached copies forward by a published incremental's live `deltas`
    (`recovery.delta.advance_copy`, from memory), then write its `meta`, in the background
    under the cache's `lock`. If it does not finish (the process ends, a copy cannot be
    written), the meta stays ``advancing`` or is gone: the next checkpoint is full."""
    started = time.thread_time()
    try:
        for name, data in deltas:
            advance_copy(cache_dir / "current" / name, data)
            fault_point("checkpoint.cache")
        meta["advance_cpu_seconds"] = round(time.thread_time() - started, 3)
        _write_meta(cache_dir, meta)
    except (OSError, sqlite3.Error):  # the cache went away: no parent
        (cache_dir / CACHE_META).unlink(missing_ok=True)
    finally:
        lock.release()


def await_cache(cache_dir: Path, timeout_s: float | None = None) -> None:
    """Wait until the background work on the cache in `cache_dir` that this process runs
    (a digest or an advance, if any) is done, at most `timeout_s` (None: unbounded).
    Another process's is waited for by taking the cache's lock (`CacheLock`), which that
    work holds."""
    with _BACKGROUND_LOCK:
        thread = _BACKGROUND.get(Path(cache_dir).absolute())
    if thread is None:
        return
    thread.join(timeout_s)
    if not thread.is_alive():
        with _BACKGROUND_LOCK:
            if _BACKGROUND.get(Path(cache_dir).absolute()) is thread:
                del _BACKGROUND[Path(cache_dir).absolute()]


def _digest_cache(cache_dir: Path, snap_id: str, lock: CacheLock) -> None:
    """The `ms1:` digest of every cached copy of the full checkpoint `snap_id`, added to
    the cache meta (``digests``, with the thread's ``digest_cpu_seconds``): what a live
    delta onto it updates (`recovery.delta.live_delta`). It runs after the checkpoint is
    published, in the background (the full's manifest records `FRAME_DIGEST`: restore
    does not need these). Its copies are the very files that were compressed and
    uploaded, unchanged until the next checkpoint: the thread holds the cache's `lock`
    (handed over by the checkpoint before it released the recovery directory's) until
    the meta is written, and every checkpoint of any process takes it first. If it does
    not finish (the process ends: the kernel drops the lock), the meta has no digests
    and the next incremental compares whole copies (`make_delta`) instead."""
    started = time.thread_time()
    try:
        digests = {str(part_index(f)): logical_digest(f)
                   for f in partition_files(cache_dir / "current")}
        meta = json.loads((cache_dir / CACHE_META).read_text())
        if meta.get("id") != snap_id:
            return
        meta["digests"] = digests
        meta["digest_cpu_seconds"] = round(time.thread_time() - started, 3)
        _write_meta(cache_dir, meta)
    except (OSError, ValueError, sqlite3.Error):  # the cache went away: no digests
        return
    finally:
        lock.release()


def _live_delta_ok(parent: _Parent, epoch: int | None, executions: list[list[int]]) -> bool:
    """True if a delta can be read from the live partitions (`recovery.delta.live_delta`):
    the parent records its epoch, digests that can be updated, and the flow has not
    (re)started since (same executions: a restart, a restore or an offline rewrite of
    the partitions all begin a new one; Bytewax then re-snapshots every key anyway)."""
    m = parent.manifest
    return (
        epoch is not None
        and parent.epoch is not None
        and epoch >= parent.epoch
        and parent.executions == executions
        and m is not None
        and all(digest_rows_sum(parent.digests.get(e.index, "")) is not None
                for e in m.partitions)
    )


@dataclass(frozen=True)
class _DeltaRead:
    """One live delta: what `live_delta` made (with its progress rows and deleted keys),
    its source-position rows, and its chunk in the pack."""

    result: LiveDelta
    positions: PositionRows
    chunk: Chunk


def _live_deltas(
    files: list[Path], parent: _Parent, epoch: int, work: Path, deadline: Deadline,
    input_steps: Iterable[str] | None,
) -> tuple[list[_DeltaRead], list[Path]]:
    """Per live partition, its delta since `parent` (`live_delta`: only the rows written
    since the parent's epoch are read), compressed into a pack, `_DELTA_WORKERS` partitions
    at a time, checked to resume at `epoch`; the deltas, the pack files. The cached copies
    are only read (see `_save_parent`)."""
    assert parent.manifest is not None and parent.epoch is not None
    since = parent.epoch
    entries = {e.index: e for e in parent.manifest.partitions}
    wanted = list(input_steps) if input_steps is not None else None
    writer = PackWriter(work)

    def one(f: Path) -> _DeltaRead:
        entry = entries[part_index(f)]
        positions = PositionRows(wanted)
        result = live_delta(f, parent.dir / f.name, since=since, epoch=epoch,
                            parent_digest=parent.digests[entry.index], parent_keys=entry.keys,
                            positions=positions)
        return _DeltaRead(result, positions, writer.add(entry.index, compress_bytes(result.data)))

    reads, packs = _jobs(files, one, writer, deadline, "reading", _DELTA_WORKERS)
    _check_sealed([r.result.progress for r in reads], epoch)
    return reads, packs


def _delta_metadata(
    parent: Manifest, reads: list[_DeltaRead], input_steps: Iterable[str] | None
) -> tuple[dict[str, Any], dict[str, int]]:
    """Source positions and state bytes per step of parent + the deltas: the parent's,
    updated by the deltas' rows (upserts, then deleted keys)."""
    rows = PositionRows(input_steps)
    for r in reads:
        rows.merge(r.positions)
    positions = {step: dict(keys) for step, keys in parent.source_positions.items()}
    for step, keys in rows.positions().items():
        positions.setdefault(step, {}).update(keys)
    for r in reads:
        for step, key in r.result.deleted:
            positions.get(step, {}).pop(key, None)
    state = dict(parent.state_bytes_by_step)
    for r in reads:
        for step, n in r.result.state_bytes.items():
            state[step] = state.get(step, 0) + n
    return positions, dict(sorted(state.items()))


def _delta_file(copy: Path, parent: _Parent, work: Path) -> Path:
    delta = work / f"{copy.stem}.delta"
    make_delta(parent.dir / copy.name, copy, delta)
    return delta


def take_checkpoint(
    recovery_dir: Path,
    store: ObjectStore,
    *,
    pipeline: str,
    code_version: str = "",
    kind: Kind = "checkpoint",
    name: str | None = None,
    incremental: bool = False,
    full_every: int = 10,
    signing_key: bytes | None = None,
    timeout_s: float | None = None,
    cache_dir: Path | None = None,
    input_steps: Iterable[str] | None = None,
) -> Manifest:
    """Copy, upload and publish (manifest last) a checkpoint or savepoint.

    A checkpoint first takes the recovery directory's file lock and the pipeline's
    store lease (`recovery.lease`), waiting for them at most `timeout_s`;
    `CheckpointError` if another checkpoint holds them that long."""
    started = time.monotonic()
    deadline = Deadline(timeout_s)
    recovery_dir = Path(recovery_dir)
    if kind != "checkpoint":
        return _take(recovery_dir, store, None, started, deadline, pipeline=pipeline,
                     code_version=code_version, kind=kind, name=name, incremental=False,
                     full_every=full_every, signing_key=signing_key, cache_dir=cache_dir,
                     input_steps=input_steps)
    ttl = (timeout_s if timeout_s is not None else _UNBOUNDED_WAIT_S) + _LEASE_MARGIN_S
    try:
        with local_lock(recovery_dir, deadline.left()):
            lease = StoreLease(store, pipeline, ttl)
            lease.acquire(deadline.left())
            try:
                return _take(recovery_dir, store, lease, started, deadline, pipeline=pipeline,
                             code_version=code_version, kind=kind, name=name,
                             incremental=incremental, full_every=full_every,
                             signing_key=signing_key, cache_dir=cache_dir, input_steps=input_steps)
            finally:
                lease.release()
    except CheckpointBusy as exc:
        raise CheckpointError(str(exc)) from None


def _put_packs(packs: list[Path], store: ObjectStore, where: tuple[str, Kind, str],
               deadline: Deadline) -> list[str]:
    """Upload the pack files (removed once stored); their keys."""
    pipeline, kind, snap_id = where
    keys = [pack_key(pipeline, kind, snap_id, n) for n in range(len(packs))]
    for key, path in zip(keys, packs, strict=True):
        put_file(store, key, path)
        path.unlink()
        deadline.check(f"uploading {key}")
    return keys


def _upload_live(
    reads: list[_DeltaRead],
    packs: list[Path],
    store: ObjectStore,
    where: tuple[str, Kind, str],
    deadline: Deadline,
) -> list[PartitionEntry]:
    """Upload the packs of `_live_deltas`; the partitions' entries (digest and key count
    updated from the parent's, see `live_delta`)."""
    keys = _put_packs(packs, store, where, deadline)
    entries = []
    for r in reads:
        result, chunk = r.result, r.chunk
        fault_point("checkpoint.upload")
        entries.append(
            PartitionEntry(index=chunk.index, object=keys[chunk.pack], sha256=chunk.sha256,
                           size=chunk.size, delta=True, digest=result.digest, keys=result.keys,
                           commit_epoch=result.seal.commit_epoch, offset=chunk.offset,
                           codec=CODEC)
        )
    return entries


def upload_copies(
    copies: list[Path],
    parent: _Parent | None,
    work: Path,
    store: ObjectStore,
    where: tuple[str, Kind, str],
    deadline: Deadline,
) -> list[PartitionEntry]:
    """Pack every sealed copy (full, or its delta against `parent`) into a few objects
    (`recovery.pack`), upload them (`recovery.transfer`); the partitions' entries."""
    writer = PackWriter(work)
    try:
        with _Pool(_WORKERS) as pool:
            prepared = list(pool.map(lambda c: _prepare(c, parent, work, writer), copies))
    finally:
        packs = writer.close()
    return _upload_prepared(prepared, packs, parent is not None, store, where, deadline)


def _upload_prepared(
    prepared: list[_Prepared],
    packs: list[Path],
    delta: bool,
    store: ObjectStore,
    where: tuple[str, Kind, str],
    deadline: Deadline,
) -> list[PartitionEntry]:
    """Upload the `packs` of `prepared` copies (or their deltas); the partitions' entries.

    ``checkpoint.upload`` fault point: once per partition, after the packs are
    stored and before the manifest (the window a kill must not publish)."""
    keys = _put_packs(packs, store, where, deadline)
    entries = []
    for p in prepared:
        chunk = p.chunk
        fault_point("checkpoint.upload")
        entries.append(
            PartitionEntry(
                index=chunk.index,
                object=keys[chunk.pack],
                sha256=chunk.sha256,
                size=chunk.size,
                delta=delta,
                digest=p.digest,
                keys=p.keys,
                commit_epoch=p.commit_epoch,
                offset=chunk.offset,
                codec=CODEC,
            )
        )
    return entries


def _copied(
    live: _Live,
    parent: _Parent | None,
    work: Path,
    store: ObjectStore,
    where: tuple[str, Kind, str],
    deadline: Deadline,
    input_steps: Iterable[str] | None,
) -> tuple[int | None, list[PartitionEntry], dict[str, Any], dict[str, int], list[Progress]]:
    """Sealed copies of every partition (`_sealed_copies`), uploaded full or as deltas
    against `parent`; their epoch, entries, source positions and state bytes per step
    (gathered by each partition's job), progress rows."""
    prepared, packs, epoch = _sealed_copies(live, parent, work, deadline, input_steps)
    entries = _upload_prepared(prepared, packs, parent is not None, store, where, deadline)
    positions = PositionRows(input_steps)
    state_bytes: dict[str, int] = {}
    for p in prepared:
        positions.merge(p.positions)
        for step, n in p.state_bytes.items():
            state_bytes[step] = state_bytes.get(step, 0) + n
    return (epoch, entries, positions.positions(), dict(sorted(state_bytes.items())),
            [p.progress for p in prepared])


def _cache_lock(cache_dir: Path, kind: Kind, deadline: Deadline) -> CacheLock:
    """What a checkpoint holds of the cache for its whole run: the cache's lock, taken within
    the deadline once this process's background digest of it is done (`CheckpointBusy` if
    that or another process's digest or checkpoint keeps it). A savepoint only makes its
    work directory in the cache (no parent, no cache update): it waits for this process's
    digest, as before, and holds no lock (`CacheLock(None)`)."""
    await_cache(cache_dir, deadline.left())
    if kind != "checkpoint":
        return CacheLock(None)
    return CacheLock.acquire(cache_dir, deadline.left())


def _take(
    recovery_dir: Path,
    store: ObjectStore,
    lease: StoreLease | None,
    started: float,
    deadline: Deadline,
    *,
    pipeline: str,
    code_version: str,
    kind: Kind,
    name: str | None,
    incremental: bool,
    full_every: int,
    signing_key: bytes | None,
    cache_dir: Path | None,
    input_steps: Iterable[str] | None,
) -> Manifest:
    """The checkpoint itself (under the lock and `lease` for a checkpoint, see take_checkpoint)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(recovery_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _cache_lock(cache_dir, kind, deadline) as lock:
        work = Path(tempfile.mkdtemp(prefix=".work-", dir=cache_dir))
        try:
            live = _live_state(recovery_dir)
            files, epoch, executions = live.files, live.epoch, live.executions
            parent = None
            if incremental and kind == "checkpoint":
                parent = _load_parent(cache_dir, store, pipeline, len(files))
                if parent is not None and len(parent.chain) + 1 >= max(1, full_every):
                    parent = None
            snap_id = new_id(kind)
            where: tuple[str, Kind, str] = (pipeline, kind, snap_id)
            if lease is not None:
                lease.claim(snap_id, [*parent.chain, parent.id] if parent else [])
            deltas = None  # the live deltas the cached copies are brought forward by
            try:
                if parent is not None and epoch is not None and _live_delta_ok(parent, epoch,
                                                                               executions):
                    reads, packs = _live_deltas(files, parent, epoch, work, deadline, input_steps)
                    deltas = [(f.name, r.result.data) for f, r in zip(files, reads, strict=True)]
                    entries = _upload_live(reads, packs, store, where, deadline)
                    assert parent.manifest is not None
                    positions, state_bytes = _delta_metadata(parent.manifest, reads, input_steps)
                    progress = [r.result.progress for r in reads]
                else:
                    epoch, entries, positions, state_bytes, progress = _copied(
                        live, parent, work, store, where, deadline, input_steps)
                if parent is not None and not _chain_intact(store, pipeline, parent):
                    parent, deltas = None, None  # its objects went away while we uploaded: full
                    epoch, entries, positions, state_bytes, progress = _copied(
                        _live_state(recovery_dir), None, work, store, where, deadline,
                        input_steps)
            except PartitionError as exc:
                raise CheckpointError(str(exc)) from None
            executions = _executions(progress)  # of what was sealed, for the next checkpoint
            missing = [o for o in sorted({e.object for e in entries}) if not store.exists(o)]
            if missing:
                raise CheckpointError(f"{kind} {snap_id}: uploaded objects vanished before publishing: "
                                      f"{missing}; nothing published")
            chain = [*parent.chain, parent.id] if parent else []
            manifest = Manifest(
                id=snap_id,
                kind=kind,
                name=name,
                pipeline=pipeline,
                created_at=datetime.now(UTC).isoformat(),
                code_version=code_version,
                partition_count=len(files),
                partitions=entries,
                source_positions=positions,
                state_bytes_by_step=state_bytes,
                base_id=chain[0] if chain else None,
                total_bytes=sum(e.size for e in entries),
                epoch=epoch,
                parent_id=parent.id if parent else None,
                chain=chain,
            )
            if signing_key:
                manifest.sign(signing_key)
            deadline.check("before publishing the manifest")
            if lease is not None:
                lease.check()
            store.put(manifest_key(pipeline, kind, snap_id), manifest.to_json().encode())
            if kind == "checkpoint":
                _save_parent(cache_dir, work, manifest, store, executions, lock, deltas)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    record_completed(manifest, (time.monotonic() - started) * 1000)
    return manifest


def record_completed(manifest: Manifest, elapsed_ms: float) -> None:
    """The metrics of a published checkpoint or savepoint (duration, size, count, timestamp)."""
    labels = {"pipeline": manifest.pipeline, "kind": manifest.kind}
    metrics.CHECKPOINT_DURATION.labels(**labels).observe(elapsed_ms)
    metrics.CHECKPOINT_SIZE.labels(**labels).set(manifest.total_bytes)
    metrics.CHECKPOINTS_COMPLETED.labels(**labels).inc()
    if manifest.kind == "checkpoint":
        metrics.LAST_CHECKPOINT_TIMESTAMP.labels(pipeline=manifest.pipeline).set(time.time())


def list_checkpoints(store: ObjectStore, pipeline: str) -> list[Manifest]:
    """Complete checkpoints, newest first."""
    return scan(store, pipeline, "checkpoint")[0]


def delete_snapshot(store: ObjectStore, pipeline: str, kind: Kind, snap_id: str) -> None:
    """Delete the manifest first (so it is never chosen half-deleted), then the objects."""
    prefix = snapshot_prefix(pipeline, kind, snap_id)
    mkey = manifest_key(pipeline, kind, snap_id)
    if store.exists(mkey):
        store.delete(mkey)
    for key in store.list(prefix):
        store.delete(key)


def apply_retention(store: ObjectStore, pipeline: str, retained: int) -> list[str]:
    """Keep the newest `retained` checkpoints (and the bases/deltas they need).

    Incomplete checkpoints older than the newest complete one are removed too,
    except the one a live lease names (in flight) and the chain it needs.
    Savepoints are never touched. Returns the deleted ids.
    """
    manifests, _ = scan(store, pipeline, "checkpoint")
    keep = manifests[: max(1, retained)]
    needed = {m.id for m in keep} | {i for m in keep for i in m.chain}
    in_flight = live_lease(store, pipeline)
    if in_flight is not None:  # a checkpoint being uploaded right now, and what it deltas onto
        needed |= {i for i in [in_flight.snapshot_id, *in_flight.needs] if i}
    newest = keep[0].id if keep else None
    root = f"{pipeline}/checkpoints/"
    all_ids = sorted({k[len(root) :].split("/", 1)[0] for k in store.list(root)})
    deleted = []
    for snap_id in all_ids:
        if snap_id in needed or newest is None or snap_id > newest:
            continue
        delete_snapshot(store, pipeline, "checkpoint", snap_id)
        deleted.append(snap_id)
    return deleted


def manifest_or_error(store: ObjectStore, pipeline: str, kind: Kind, snap_id: str) -> Manifest:
    """Read one manifest; ManifestError if missing or unreadable."""
    try:
        return Manifest.from_json(store.get(manifest_key(pipeline, kind, snap_id)))
    except StoreError as exc:
        raise ManifestError(f"{kind} {snap_id}: {exc}") from None
