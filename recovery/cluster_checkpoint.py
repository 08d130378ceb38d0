"""Coordinated checkpoints and savepoints of a Bytewax cluster, through the object store.

A cluster of N processes holds the pipeline's partitions spread over N local
recovery directories (`recovery.placement`: partition i lives with process
``i % N``). Bytewax routes the ``exs``/``fronts`` rows of an execution to
whichever partition their key hashes to, so no process alone can tell the
resume epoch (`recovery.partitions.resume_epoch` is over *all* partitions);
the union of every process's rows can. The protocol, one snapshot id at a time:

1. the coordinator (process 0) issues a `Request` (id, kind, process and
   partition count, timeout) at ``{pipeline}/cluster/request.json``;
2. every process (the coordinator too) checks that its directory holds exactly
   the partitions it owns, and publishes the progress rows of its live
   partitions at ``<snapshot>/cluster/front-K.json``;
3. each waits for all N reports and computes the same consistent epoch R over
   their union; it copies each of its partitions sealed at R (`copy_sealed`:
   a copy whose commit epoch reached R is refused, as in a one-process
   checkpoint), packs and uploads them under ``<snapshot>/proc-K/``, and
   publishes its part at ``<snapshot>/cluster/part-K.json`` (entries, R, the
   progress rows of its sealed copies, source positions, state sizes);
4. the coordinator waits for all N parts and verifies them (same R, every
   partition exactly once and by its owner, every object present, the sealed
   copies together resume at exactly R), then writes the ordinary global
   `Manifest` LAST, with every partition's entry.

A process that is down or slow makes the snapshot fail (`CheckpointTimeout`
after the request's timeout, nothing published; the caller counts it in
``checkpoint_failure_count``): there is never a partial snapshot, since the
manifest is what makes a snapshot visible (`recovery.manifest`). A failed snapshot
leaves nothing behind either (an "incomplete" note in `savepoint list`, objects
that retention must find): the coordinator marks the request abandoned
(``{pipeline}/cluster/abandoned/{id}``, outside every snapshot directory) and
deletes the snapshot's directory; a process that answers later checks the
mark after it wrote and deletes what it wrote (the mark is written before the
coordinator's delete, so one of the two always sees the other's keys). Marks
older than an hour are pruned by the next abandon. The global
manifest is a normal one, so `recovery.restore`, verification, listing,
retention and savepoint pinning work unchanged; `restore_process` restores a
process's share of it onto any process count (rescale).

Cluster snapshots are always full (no deltas); the incremental chain is a
one-directory cache (`recovery.checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recovery.checkpoint import (
    CheckpointError,
    CheckpointTimeout,
    default_cache_dir,
    record_completed,
)
from recovery.checkpoint import Deadline as _Deadline
from recovery.checkpoint import upload_copies as _upload
from recovery.lease import CheckpointBusy, StoreLease, local_lock
from recovery.manifest import Kind, Manifest, PartitionEntry, manifest_key, new_id, snapshot_prefix
from recovery.partitions import (
    PartitionError,
    connect,
    copy_sealed,
    part_index,
    partition_files,
    resume_epoch,
)
from recovery.placement import owned
from recovery.positions import source_positions, state_bytes_by_step
from recovery.restore import RestoreResult, restore
from recovery.savepoint import unpin
from recovery.store import ObjectStore, StoreError, StoreNotFound

__all__ = [
    "PeerFailed",
    "Request",
    "abandon",
    "abandoned",
    "answer",
    "follow",
    "issue",
    "local_answers",
    "pending_request",
    "publish",
    "restore_process",
    "take_cluster_snapshot",
]

POLL_S = 0.1
_LEASE_MARGIN_S = 60.0
Rows = dict[str, list[list[int]]]


class PeerFailed(CheckpointError):
    """Another process of the cluster reported that its share failed."""


@dataclass(frozen=True)
class Request:
    """One coordinated snapshot: what every process of the cluster must contribute to."""

    id: str
    kind: Kind
    name: str | None
    pipeline: str
    processes: int
    partition_count: int
    timeout_s: float
    issued_at: float = 0.0  # wall clock (time.time()) when the coordinator issued it

    def expired(self, now: float | None = None) -> bool:
        """Past its timeout: the coordinator has given up on it, answering is wasted work."""
        return (time.time() if now is None else now) > self.issued_at + self.timeout_s

    def key(self, what: str) -> str:
        """The store key of `what` (``cluster/front-0.json``, ``manifest.json``) in the snapshot."""
        return snapshot_prefix(self.pipeline, self.kind, self.id) + what


def request_key(pipeline: str) -> str:
    return f"{pipeline}/cluster/request.json"


def issue(
    store: ObjectStore,
    *,
    pipeline: str,
    processes: int,
    partition_count: int,
    kind: Kind = "checkpoint",
    name: str | None = None,
    timeout_s: float = 60.0,
) -> Request:
    """The coordinator: publish a new request (a fresh snapshot id) for every process."""
    req = Request(new_id(kind), kind, name, pipeline, processes, partition_count, timeout_s,
                  time.time())
    store.put(request_key(pipeline), json.dumps(asdict(req)).encode())
    return req


def _abandoned_key(pipeline: str, snap_id: str) -> str:
    return f"{pipeline}/cluster/abandoned/{snap_id}"


def abandoned(store: ObjectStore, req: Request) -> bool:
    """True once the coordinator gave `req` up (`abandon`): whatever is written for it is garbage."""
    return store.exists(_abandoned_key(req.pipeline, req.id))


def _discard(store: ObjectStore, req: Request) -> None:
    """Delete every key of `req`'s snapshot directory (its manifest was never written)."""
    for key in store.list(snapshot_prefix(req.pipeline, req.kind, req.id)):
        store.delete(key)


_MARK_KEEP_S = 3600.0


def abandon(store: ObjectStore, req: Request, now: float | None = None) -> None:
    """The coordinator gave `req` up: mark it (first), delete its snapshot directory (then),
    prune marks older than an hour (no answer outlives its request's timeout by that much)."""
    store.put(_abandoned_key(req.pipeline, req.id), b"")
    _discard(store, req)
    now = time.time() if now is None else now
    for key in store.list(_abandoned_key(req.pipeline, "")):
        try:
            stamp = datetime.strptime(key.rsplit("/", 1)[1].split("-")[1], "%Y%m%dT%H%M%S.%fZ")
        except (IndexError, ValueError):
            continue
        if stamp.replace(tzinfo=UTC).timestamp() < now - _MARK_KEEP_S:
            store.delete(key)


def pending_request(store: ObjectStore, pipeline: str) -> Request | None:
    """The latest request, or None (a process answers each id once: `answer`)."""
    try:
        doc = json.loads(store.get(request_key(pipeline)))
    except StoreNotFound:
        return None
    return Request(**doc)


def _progress(paths: Iterable[Path]) -> Rows:
    """The ``exs`` and ``fronts`` rows of these partitions (what the resume epoch is made of)."""
    rows: Rows = {"exs": [], "fronts": []}
    for path in paths:
        conn = connect(path, readonly=True)
        try:
            rows["exs"] += [list(r) for r in conn.execute(
                "SELECT ex_num, worker_count, resume_epoch FROM exs")]
            rows["fronts"] += [list(r) for r in conn.execute(
                "SELECT ex_num, worker_index, worker_frontier FROM fronts")]
        finally:
            conn.close()
    return rows


def _epoch(reports: Iterable[Rows]) -> int | None:
    """Bytewax's resume epoch over the union of `reports` (`partitions.resume_epoch` on them)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE exs (ex_num, worker_count, resume_epoch)")
        conn.execute("CREATE TABLE fronts (ex_num, worker_index, worker_frontier)")
        for rows in reports:
            conn.executemany("INSERT INTO exs VALUES (?, ?, ?)", rows["exs"])
            conn.executemany("INSERT INTO fronts VALUES (?, ?, ?)", rows["fronts"])
        return resume_epoch([conn])
    finally:
        conn.close()


def _gather(store: ObjectStore, req: Request, what: str, deadline: _Deadline) -> list[dict[str, Any]]:
    """Every process's ``cluster/{what}-K.json``, waiting for them until `deadline`;
    `CheckpointTimeout` names the processes that did not answer."""
    found: dict[int, dict[str, Any]] = {}
    while True:
        failed = store.list(req.key("cluster/error-"))
        if failed:
            raise PeerFailed(f"{req.kind} {req.id}: {store.get(failed[0]).decode()}; "
                             "nothing published")
        for k in range(req.processes):
            if k not in found:
                try:
                    found[k] = json.loads(store.get(req.key(f"cluster/{what}-{k}.json")))
                except StoreNotFound:
                    pass
        if len(found) == req.processes:
            return [found[k] for k in range(req.processes)]
        missing = sorted(set(range(req.processes)) - set(found))
        try:
            deadline.check(f"{req.kind} {req.id}: no {what} report from process(es) {missing} "
                           "(down or slow); nothing published")
        except CheckpointTimeout as exc:
            raise CheckpointTimeout(str(exc)) from None
        time.sleep(min(POLL_S, deadline.left()))


def _own_files(recovery_dir: Path, req: Request, process_id: int) -> list[Path]:
    files = partition_files(recovery_dir)
    held = sorted(part_index(f) for f in files)
    wanted = owned(process_id, req.processes, req.partition_count)
    if held != wanted:
        raise CheckpointError(
            f"process {process_id} of {req.processes}: {recovery_dir} holds partitions {held} but "
            f"owns {wanted} of {req.partition_count}; restore it for this process count first"
        )
    return files


def answer(
    recovery_dir: Path,
    store: ObjectStore,
    req: Request,
    process_id: int,
    *,
    cache_dir: Path | None = None,
    input_steps: Iterable[str] | None = None,
) -> int | None:
    """Process `process_id`'s share of `req` (steps 2-3 of the module doc); the epoch R.

    Raises `CheckpointError` (`CheckpointTimeout` past the request's timeout); a
    failure of its own (not a peer's) is also published as ``cluster/error-K.json``,
    so the others give up at once instead of at the timeout. Whatever it wrote is
    deleted again if the coordinator abandoned `req` meanwhile (module doc)."""
    try:
        return _answer(Path(recovery_dir), store, req, process_id, cache_dir, input_steps)
    except CheckpointError as exc:
        if not isinstance(exc, PeerFailed):  # a peer's failure is that peer's report
            store.put(req.key(f"cluster/error-{process_id}.json"), f"process {process_id}: {exc}".encode())
        raise
    finally:
        if process_id != 0 and abandoned(store, req):  # process 0 is the coordinator: `abandon`
            _discard(store, req)


def _answer(
    recovery_dir: Path,
    store: ObjectStore,
    req: Request,
    process_id: int,
    cache_dir: Path | None,
    input_steps: Iterable[str] | None,
) -> int | None:
    deadline = _Deadline(req.timeout_s)
    with local_lock(recovery_dir, deadline.left()):
        files = _own_files(recovery_dir, req, process_id)
        store.put(req.key(f"cluster/front-{process_id}.json"), json.dumps(_progress(files)).encode())
        epoch = _epoch(_gather(store, req, "front", deadline))
        cache = Path(cache_dir) if cache_dir else default_cache_dir(recovery_dir)
        cache.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".cluster-", dir=cache))
        try:
            copies = [work / f.name for f in files]
            for src, dst in zip(files, copies, strict=True):
                copy_sealed(src, dst, epoch)
                deadline.check(f"process {process_id} copying {src.name}")
            where = (req.pipeline, req.kind, f"{req.id}/proc-{process_id}")
            entries = _upload(copies, None, work, store, where, deadline) if copies else []
            part = {
                "process": process_id,
                "epoch": epoch,
                "entries": [asdict(e) for e in entries],
                "sealed": _progress(copies),
                "source_positions": source_positions(copies, input_steps),
                "state_bytes_by_step": state_bytes_by_step(copies),
            }
        except PartitionError as exc:
            raise CheckpointError(f"process {process_id}: {exc}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        store.put(req.key(f"cluster/part-{process_id}.json"), json.dumps(part).encode())
    return epoch


def follow(
    recovery_dir: Path,
    store: ObjectStore,
    pipeline: str,
    process_id: int,
    processes: int,
    stop: threading.Event,
    *,
    log: Callable[[str], None],
    poll_s: float = 1.0,
    input_steps: Iterable[str] | None = None,
    on_answer: Callable[[Request, Exception | None], None] | None = None,
) -> None:
    """Process `process_id` of `processes` other than the coordinator (a pod's supervisor):
    answer every new, unexpired request of a cluster of `processes` until `stop` is set
    (a request of another process count is a previous cluster's: not ours to answer);
    failures are logged (the coordinator counts the failed snapshot) and the loop goes on,
    whatever the error. `on_answer(req, error)` after each answer."""
    answered: set[str] = set()
    while not stop.wait(poll_s):
        req = None
        try:
            req = pending_request(store, pipeline)
            if req is None or req.id in answered or req.expired() or req.processes != processes \
                    or abandoned(store, req):
                continue
            answered.add(req.id)
            epoch = answer(recovery_dir, store, req, process_id, input_steps=input_steps)
            log(f"{req.kind} {req.id}: process {process_id}'s share uploaded (epoch {epoch})")
            error: Exception | None = None
        except Exception as exc:  # noqa: BLE001 - the follower thread must outlive any failure
            log(f"cluster snapshot: process {process_id}: {type(exc).__name__}: {exc}")
            error = exc
        if req is not None and on_answer is not None:
            on_answer(req, error)


def local_answers(
    dirs: Sequence[Path], store: ObjectStore, *, input_steps: Iterable[str] | None = None
) -> Callable[[Request], None]:
    """For a local cluster whose process K keeps its partitions in ``dirs[K]``: the
    `answer_others` of `take_cluster_snapshot`, answering for processes 1.. in threads
    (a failure is published by `answer` itself; the coordinator reports it)."""

    def start(req: Request) -> None:
        for k in range(1, len(dirs)):
            threading.Thread(target=_quietly, args=(dirs[k], store, req, k, input_steps),
                             name=f"cluster-answer-{k}", daemon=True).start()

    return start


def _quietly(recovery_dir: Path, store: ObjectStore, req: Request, k: int,
             input_steps: Iterable[str] | None) -> None:
    try:
        answer(recovery_dir, store, req, k, input_steps=input_steps)
    except (CheckpointError, StoreError):
        pass  # published as cluster/error-K.json (or a timeout the coordinator sees too)


def _verified(store: ObjectStore, req: Request, parts: list[dict[str, Any]]) -> list[PartitionEntry]:
    """Every part's entries, after the checks of step 4 (module doc); `CheckpointError` if one fails."""
    where = f"{req.kind} {req.id}"
    epochs = {p["epoch"] for p in parts}
    if len(epochs) != 1:
        raise CheckpointError(f"{where}: the processes copied at different epochs {sorted(epochs, key=str)}")
    entries: list[PartitionEntry] = []
    for k, part in enumerate(parts):
        mine = [PartitionEntry(**e) for e in part["entries"]]
        indices = sorted(e.index for e in mine)
        if part["process"] != k or indices != owned(k, req.processes, req.partition_count):
            raise CheckpointError(f"{where}: process {k}'s part holds partitions {indices}, "
                                  f"not the ones it owns")
        entries += mine
    missing = [o for o in sorted({e.object for e in entries}) if not store.exists(o)]
    if missing:
        raise CheckpointError(f"{where}: uploaded objects are missing: {missing}; nothing published")
    sealed = _epoch(p["sealed"] for p in parts)
    if sealed != parts[0]["epoch"]:
        raise CheckpointError(
            f"{where}: the cluster (re)started while the partitions were copied (epoch "
            f"{parts[0]['epoch']} -> {sealed}); nothing published, the next one will be consistent"
        )
    return sorted(entries, key=lambda e: e.index)


def publish(
    store: ObjectStore,
    req: Request,
    *,
    code_version: str = "",
    signing_key: bytes | None = None,
    timeout_s: float | None = None,
) -> Manifest:
    """The coordinator: wait for every part, verify them, write the global manifest LAST."""
    parts = _gather(store, req, "part", _Deadline(req.timeout_s if timeout_s is None else timeout_s))
    entries = _verified(store, req, parts)
    positions: dict[str, dict[str, Any]] = {}
    state: dict[str, int] = {}
    for part in parts:
        for step, keys in part["source_positions"].items():
            positions.setdefault(step, {}).update(keys)
        for step, n in part["state_bytes_by_step"].items():
            state[step] = state.get(step, 0) + n
    manifest = Manifest(
        id=req.id,
        kind=req.kind,
        name=req.name,
        pipeline=req.pipeline,
        created_at=datetime.now(UTC).isoformat(),
        code_version=code_version,
        partition_count=req.partition_count,
        partitions=entries,
        source_positions=dict(sorted(positions.items())),
        state_bytes_by_step=dict(sorted(state.items())),
        total_bytes=sum(e.size for e in entries),
        epoch=parts[0]["epoch"],
    )
    if signing_key:
        manifest.sign(signing_key)
    store.put(manifest_key(req.pipeline, req.kind, req.id), manifest.to_json().encode())
    return manifest


def take_cluster_snapshot(
    recovery_dir: Path,
    store: ObjectStore,
    *,
    pipeline: str,
    processes: int,
    partition_count: int,
    kind: Kind = "checkpoint",
    name: str | None = None,
    code_version: str = "",
    signing_key: bytes | None = None,
    timeout_s: float = 60.0,
    input_steps: Iterable[str] | None = None,
    answer_others: Callable[[Request], None] | None = None,
) -> Manifest:
    """The coordinator (process 0, `recovery_dir` its directory): issue, answer, publish.

    Holds the pipeline's store lease (one checkpoint at a time, as `take_checkpoint`).
    `answer_others(req)` is called right after the request is issued and must not block
    (`local_answers`: a local cluster answers for its other processes in threads; pods
    `follow` the request key instead).
    Raises `CheckpointError` / `CheckpointTimeout`: nothing is published then."""
    started = time.monotonic()
    lease = StoreLease(store, pipeline, timeout_s + _LEASE_MARGIN_S)
    try:
        lease.acquire(timeout_s)
    except CheckpointBusy as exc:
        raise CheckpointError(str(exc)) from None
    try:
        req = issue(store, pipeline=pipeline, processes=processes, partition_count=partition_count,
                    kind=kind, name=name, timeout_s=timeout_s)
        lease.claim(req.id, [])
        if answer_others is not None:
            answer_others(req)
        try:
            answer(recovery_dir, store, req, 0, input_steps=input_steps)
            manifest = publish(store, req, code_version=code_version, signing_key=signing_key,
                               timeout_s=max(0.0, timeout_s - (time.monotonic() - started)))
        except BaseException:
            with contextlib.suppress(StoreError):  # the original error is the one to report
                abandon(store, req)  # nothing of a failed snapshot stays (module doc)
            raise
    finally:
        lease.release()
    if kind == "savepoint":
        unpin(store, pipeline, manifest.id)  # its objects tagged unpinned, as create_savepoint does
    record_completed(manifest, (time.monotonic() - started) * 1000)
    return manifest


def restore_process(
    recovery_dir: Path,
    *,
    process_id: int,
    processes: int,
    checkpoint_store: ObjectStore,
    savepoint_store: ObjectStore,
    pipeline: str,
    partition_count: int,
    **options: Any,
) -> RestoreResult:
    """`recovery.restore.restore` of process `process_id`'s share (`placement.owned`) of the
    chosen snapshot, whatever process count took it (rescale); options as `restore`'s."""
    return restore(
        recovery_dir,
        checkpoint_store=checkpoint_store,
        savepoint_store=savepoint_store,
        pipeline=pipeline,
        partition_count=partition_count,
        partitions=owned(process_id, processes, partition_count),
        **options,
    )
