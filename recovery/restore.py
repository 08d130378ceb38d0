"""Restore: choose a snapshot, verify it, and swap it into the recovery directory.

Chain (``target="latest"``): complete checkpoints newest first, then
savepoints newest first, then a fresh start. Each candidate is downloaded
into a temporary directory next to the recovery directory and verified: the
signature when a signing key is set (unsigned or tampered -> rejected), the
sha256 of every object (base and deltas of an incremental checkpoint), that
it decompresses, and the logical digest of every assembled partition. The
first candidate that passes replaces the recovery directory atomically
(rename); each rejected one is listed in `RestoreResult.notes` with the
reason.

- ``strict=True``: the first candidate must pass; any rejection raises
  `RestoreError` instead of falling back. With no snapshot at all, a fresh
  start is not a fallback and is allowed.
- An explicit target (``("checkpoint", id)`` / ``("savepoint", id_or_name)``)
  is restored or `RestoreError` is raised: never something else.
- A snapshot of another pipeline or another partition count is refused with
  `RestoreError` in every mode (falling back would silently drop the state).
- Fresh: empty partitions are created if the directory has none; existing
  local partitions are left as they are.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import tempfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dataflows.faults import fault_point
from recovery.checkpoint import manifest_or_error
from recovery.delta import apply_delta
from recovery.manifest import Kind, Manifest, ManifestError, PartitionEntry, scan
from recovery.partitions import init_partitions, logical_digest, partition_files
from recovery.store import ObjectStore, StoreError

__all__ = ["RestoreError", "RestoreResult", "restore"]

PARALLEL_DOWNLOADS = 8
Target = Literal["latest"] | tuple[Kind, str]


class RestoreError(Exception):
    """Nothing acceptable to restore under the given rules."""


class _Rejected(Exception):
    """A candidate failed verification (fall back unless strict)."""


@dataclass
class RestoreResult:
    """What was restored and why; `notes` lists every rejected candidate."""

    chosen: Literal["checkpoint", "savepoint", "fresh"]
    id: str | None
    reason: str
    notes: list[str] = field(default_factory=list)
    epoch: int | None = None
    source_positions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "id": self.id,
            "reason": self.reason,
            "notes": self.notes,
            "epoch": self.epoch,
            "source_positions": self.source_positions,
        }


def _check_compatible(m: Manifest, pipeline: str, partition_count: int) -> None:
    if m.pipeline != pipeline:
        raise RestoreError(
            f"{m.kind} {m.id} belongs to pipeline {m.pipeline!r}, not {pipeline!r}; refusing it"
        )
    if m.partition_count != partition_count:
        raise RestoreError(
            f"{m.kind} {m.id} has {m.partition_count} partitions but this pipeline is configured "
            f"for {partition_count}; the partition count is fixed at init (restore into a "
            "directory with the same count, or start fresh explicitly)"
        )


def _fetch(store: ObjectStore, key: str, sha256: str) -> bytes:
    try:
        data = store.get(key)
    except StoreError as exc:
        raise _Rejected(str(exc)) from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise _Rejected(f"object {key} is corrupted or truncated (sha256 mismatch)")
    try:
        return zlib.decompress(data)
    except zlib.error as exc:
        raise _Rejected(f"object {key} does not decompress: {exc}") from None


def _chain(m: Manifest, store: ObjectStore, key: bytes | None) -> list[Manifest]:
    chain = []
    for snap_id in m.chain:
        try:
            link = manifest_or_error(store, m.pipeline, m.kind, snap_id)
            if key:
                link.verify(key)
        except ManifestError as exc:
            raise _Rejected(f"needs {snap_id} (base/delta) which is unusable: {exc}") from None
        chain.append(link)
    return [*chain, m]


def _assemble(entry: PartitionEntry, links: list[Manifest], store: ObjectStore, out: Path) -> None:
    """Download base + deltas of one partition into `out`, verify every checksum."""
    target = out / f"part-{entry.index}.sqlite3"
    for link in links:
        step = next((e for e in link.partitions if e.index == entry.index), None)
        if step is None:
            raise _Rejected(f"{link.id} has no partition {entry.index}")
        data = _fetch(store, step.object, step.sha256)
        try:
            if not step.delta:
                target.write_bytes(data)
            else:
                delta = out / f".delta-{entry.index}"
                delta.write_bytes(data)
                apply_delta(target, delta)
                delta.unlink()
        except sqlite3.DatabaseError as exc:
            raise _Rejected(f"partition {entry.index} of {link.id} is unreadable: {exc}") from None
    try:
        digest = logical_digest(target)
    except sqlite3.DatabaseError as exc:
        raise _Rejected(f"partition {entry.index} is unreadable: {exc}") from None
    if digest != entry.digest:
        raise _Rejected(f"partition {entry.index} does not match its digest after assembly")


def _materialize(m: Manifest, store: ObjectStore, key: bytes | None, out: Path) -> None:
    if key:
        try:
            m.verify(key)
        except ManifestError as exc:
            raise _Rejected(str(exc)) from None
    links = _chain(m, store, key)
    with ThreadPoolExecutor(max_workers=PARALLEL_DOWNLOADS) as pool:
        futures = [pool.submit(_assemble, e, links, store, out) for e in m.partitions]
        for f in futures:
            f.result()


def _swap_in(tmp: Path, recovery_dir: Path) -> None:
    """Replace `recovery_dir` by `tmp`: a directory rename, or per file for a mount point."""
    old = None
    if recovery_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{recovery_dir.name}.old-", dir=recovery_dir.parent))
        old.rmdir()
        try:
            recovery_dir.rename(old)
        except OSError:  # a mount point (Kubernetes volume) cannot be renamed
            _swap_files(tmp, recovery_dir)
            return
    fault_point("restore.swap")
    tmp.rename(recovery_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _swap_files(tmp: Path, recovery_dir: Path) -> None:
    """Swap partition files one by one (each an atomic rename inside the directory)."""
    for stale in partition_files(recovery_dir):
        stale.unlink()
    for leftover in recovery_dir.glob("part-*.sqlite3-*"):  # -wal / -shm of the old files
        leftover.unlink()
    for part in partition_files(tmp):
        staged = recovery_dir / f".{part.name}.restoring"
        shutil.copyfile(part, staged)
        fault_point("restore.swap")
        staged.replace(recovery_dir / part.name)
    shutil.rmtree(tmp, ignore_errors=True)


def _candidates(
    target: Target, pipeline: str, checkpoint_store: ObjectStore, savepoint_store: ObjectStore
) -> tuple[list[tuple[Manifest, ObjectStore]], list[str]]:
    if target == "latest":
        ckpts, notes = scan(checkpoint_store, pipeline, "checkpoint")
        sps, sp_notes = scan(savepoint_store, pipeline, "savepoint")
        return [(m, checkpoint_store) for m in ckpts] + [
            (m, savepoint_store) for m in sps
        ], notes + sp_notes
    kind, wanted = target
    store = checkpoint_store if kind == "checkpoint" else savepoint_store
    manifests, _ = scan(store, pipeline, kind)
    for m in manifests:
        if wanted in (m.id, m.name):
            return [(m, store)], []
    raise RestoreError(f"no complete {kind} {wanted!r} for pipeline {pipeline} in {store.url}")


def restore(
    recovery_dir: Path,
    *,
    checkpoint_store: ObjectStore,
    savepoint_store: ObjectStore,
    pipeline: str,
    partition_count: int,
    target: Target = "latest",
    strict: bool = False,
    signing_key: bytes | None = None,
    check: Callable[[Path, Manifest], list[str]] | None = None,
) -> RestoreResult:
    """Restore the best valid snapshot into `recovery_dir` (see module doc)."""
    recovery_dir = Path(recovery_dir).absolute()
    recovery_dir.parent.mkdir(parents=True, exist_ok=True)
    candidates, notes = _candidates(target, pipeline, checkpoint_store, savepoint_store)
    explicit = target != "latest"
    broken = [n for n in notes if " rejected: " in n]
    if strict and broken:
        raise RestoreError(f"{broken[0]} (strict: not falling back)")
    for n, (m, store) in enumerate(candidates):
        _check_compatible(m, pipeline, partition_count)
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{recovery_dir.name}.restore-", dir=recovery_dir.parent)
        )
        try:
            _materialize(m, store, signing_key, tmp)
            if check is not None:  # e.g. the step-id check; raises RestoreError to refuse
                notes.extend(check(tmp, m))
        except _Rejected as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            note = f"{m.kind} {m.id} rejected: {exc}"
            notes.append(note)
            if strict or explicit:
                raise RestoreError(
                    f"{note} (strict: not falling back)" if strict else note
                ) from None
            continue
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _swap_in(tmp, recovery_dir)
        if n == 0:
            reason = "requested" if explicit else f"latest valid {m.kind}"
        else:
            reason = f"latest valid {m.kind} after {n} rejected candidate(s)"
        return RestoreResult(
            chosen=m.kind,
            id=m.id,
            reason=f"{reason}: {m.id} (epoch {m.epoch}, created {m.created_at})",
            notes=notes,
            epoch=m.epoch,
            source_positions=m.source_positions,
        )
    created = (
        init_partitions(recovery_dir, partition_count)
        if not partition_files(recovery_dir)
        else False
    )
    what = (
        f"created {partition_count} empty partitions"
        if created
        else "kept the existing local partitions"
    )
    why = "no valid checkpoint or savepoint" if candidates else "no checkpoint or savepoint found"
    return RestoreResult(chosen="fresh", id=None, reason=f"{why}; {what}", notes=notes)
