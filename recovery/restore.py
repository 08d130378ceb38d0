"""Restore: choose a snapshot, verify it, and swap it into the recovery directory.

Chain (``target="latest"``): complete checkpoints newest first, then
savepoints newest first, then a fresh start. Each candidate's manifest is
checked against its signature (when a signing key is set) before any of its
fields is read; then it is downloaded into a stage inside the recovery
directory and verified: the sha256 of every object (base and deltas of an
incremental checkpoint), that it decompresses, and the logical digest of
every assembled partition (a full checkpoint's partition, stored as one zstd
frame with `recovery.pack.FRAME_DIGEST`, is checked by its sha256 and the
frame's content checksum: it is the very file the checkpoint compressed). The first candidate that passes replaces the
local partitions with the crash-safe swap of `recovery.swap` (old or new,
never a mix); each rejected one is listed in `RestoreResult.notes`.

What falls back and what fails:

- Verified corruption (sha256 or digest mismatch, undecompressable or
  unreadable object, a base/delta object or manifest that is gone, a bad
  signature on some candidates) rejects that candidate: the chain falls back.
- A store error (``503 SlowDown``, timeout, connection reset, refused or
  expired credentials) is retried with `retry` (`dataflows.retry.RetryPolicy`,
  on top of the store's own retries); if it persists the restore fails with
  `StoreUnavailable`: an older snapshot or a fresh start would silently drop
  the state that could not be read.
- Signed snapshots but no signing key, or no candidate whose signature
  verifies with the key (the key changed): `RestoreError`, never a fresh start.
- With a key, an unsigned manifest is rejected unless `allow_unsigned`.
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

import shutil
import sqlite3
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from dataflows.retry import RetryExhausted, RetryPolicy
from recovery.delta import apply_delta
from recovery.manifest import (
    Kind,
    Manifest,
    ManifestError,
    PartitionEntry,
    SignatureError,
    manifest_key,
    parse_manifest,
    scan,
)
from recovery.pack import FRAME_DIGEST, PackError, Packs
from recovery.partitions import digest_matches, init_partitions, part_index, partition_files
from recovery.store import ObjectStore, StoreError, StoreNotFound
from recovery.swap import settle, stage_dir, swap_in
from recovery.transfer import get_file

__all__ = ["STORE_RETRY", "RestoreError", "RestoreResult", "StoreUnavailable", "restore"]

PARALLEL_DOWNLOADS = 8
# Partitions assembled at once (write, apply deltas, verify): local CPU and disk, not the
# store, so about the cores; and one logical digest at a time. A digest is a Python loop
# over every row (`recovery.partitions.rows_hash_sum`) whose sqlite3 calls release and take
# the GIL per row: 8 at once took 2x the CPU of one at a time. Restoring 1M keys in 256
# partitions from a file store (one full + one incremental): 8 assemblers and 8 digests
# 5.85-6.53 s (7.8-8.6 CPU-s); 8 assemblers, 1 digest 3.39-3.47 s (3.8-3.9); 4 and 1
# 3.24-3.28 s (session 25).
_ASSEMBLERS = 4
_DIGEST = threading.Lock()
Target = Literal["latest"] | tuple[Kind, str]
T = TypeVar("T")
# On top of the store's own retries: ride out a store outage of ~half a minute.
STORE_RETRY = RetryPolicy(max_attempts=5, initial_backoff_s=1.0, max_backoff_s=15.0)
_FRESH_HINT = "; to start from scratch anyway (the stored state is then not used), pass --fresh"


class RestoreError(Exception):
    """Nothing acceptable to restore under the given rules."""


class StoreUnavailable(RestoreError):
    """The store could not be read (after retries): nothing was restored, nothing fell back."""


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


class _Patient:
    """`store` for reading, each call retried with `policy` (a missing object is an answer)."""

    def __init__(self, store: ObjectStore, policy: RetryPolicy) -> None:
        self.inner, self.url, self.policy = store, store.url, policy

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return self.policy.call(
                fn, lambda e: isinstance(e, StoreError) and not isinstance(e, StoreNotFound)
            )
        except RetryExhausted as exc:
            raise StoreUnavailable(
                f"the store could not be read, after {exc.attempts} attempt(s): {exc.last}; "
                "nothing was restored and nothing older or fresh was chosen instead "
                "(it would silently drop the state that could not be read): fix the store "
                f"or its credentials and start again{_FRESH_HINT}"
            ) from None

    def get(self, key: str) -> bytes:
        return self._call(lambda: self.inner.get(key))

    def list(self, prefix: str) -> list[str]:
        return self._call(lambda: self.inner.list(prefix))

    def exists(self, key: str) -> bool:
        return self._call(lambda: self.inner.exists(key))

    def put(self, key: str, data: bytes) -> None:
        raise StoreError(f"{self.url}: restore never writes ({key})")

    def delete(self, key: str) -> None:
        raise StoreError(f"{self.url}: restore never deletes ({key})")


def _fetch(packs: Packs, step: PartitionEntry) -> bytes:
    """`step`'s verified, decompressed bytes (packed or the older one-object format)."""
    try:
        return packs.chunk(step)
    except StoreNotFound as exc:
        raise _Rejected(f"{exc} (the snapshot is incomplete)") from None
    except PackError as exc:
        raise _Rejected(str(exc)) from None


def _chain(
    m: Manifest, store: ObjectStore, key: bytes | None, allow_unsigned: bool
) -> list[Manifest]:
    """The base and deltas `m` is built on, each verified like `m` itself, then `m`."""
    chain = []
    for snap_id in m.chain:
        where = f"{m.kind} {snap_id}"
        try:
            raw = store.get(manifest_key(m.pipeline, m.kind, snap_id))
            link = parse_manifest(raw, where, key, allow_unsigned=allow_unsigned)
        except (ManifestError, StoreNotFound) as exc:
            raise _Rejected(f"needs {snap_id} (base/delta) which is unusable: {exc}") from None
        _refuse_signed_without_key(link, key)
        chain.append(link)
    return [*chain, m]


def _refuse_signed_without_key(m: Manifest, key: bytes | None) -> None:
    if key is None and m.signature:
        raise RestoreError(
            f"{m.kind} {m.id} is signed but no signing key is set (security.signing-key-env): "
            "its signature cannot be checked, so it is refused rather than loaded unverified; "
            f"set the key{_FRESH_HINT}"
        )


def _assemble(entry: PartitionEntry, links: list[Manifest], packs: Packs, out: Path) -> None:
    """Download base + deltas of one partition into `out`, verify every checksum."""
    target = out / f"part-{entry.index}.sqlite3"
    for link in links:
        step = next((e for e in link.partitions if e.index == entry.index), None)
        if step is None:
            raise _Rejected(f"{link.id} has no partition {entry.index}")
        data = _fetch(packs, step)
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
    if entry.digest == FRAME_DIGEST:  # a full copy, as compressed: `read_chunk` checked it
        if len(links) != 1 or entry.delta:
            raise _Rejected(f"partition {entry.index}: a frame digest on a delta chain")
        return
    try:
        with _DIGEST:  # see _ASSEMBLERS
            matches = digest_matches(target, entry.digest)  # either digest kind (older checkpoints)
    except sqlite3.DatabaseError as exc:
        raise _Rejected(f"partition {entry.index} is unreadable: {exc}") from None
    if not matches:
        raise _Rejected(f"partition {entry.index} does not match its digest after assembly")


def _materialize(
    m: Manifest, store: ObjectStore, key: bytes | None, allow_unsigned: bool, out: Path,
    partitions: Collection[int] | None = None,
) -> None:
    """Download and verify every partition of `m` (or only `partitions`) into `out` (its
    signature was checked)."""
    links = _chain(m, store, key, allow_unsigned)
    packs = Packs(lambda k, path: _download(store, k, path), out)

    def wanted(e: PartitionEntry) -> bool:
        return partitions is None or e.index in partitions

    try:
        try:  # every object of the chain at once, in parallel (`recovery.pack`: few objects)
            packs.fetch([e for link in links for e in link.partitions if wanted(e)],
                        PARALLEL_DOWNLOADS)
        except StoreNotFound as exc:
            raise _Rejected(f"{exc} (the snapshot is incomplete)") from None
        with ThreadPoolExecutor(max_workers=_ASSEMBLERS) as pool:
            futures = [pool.submit(_assemble, e, links, packs, out) for e in m.partitions if wanted(e)]
            for f in futures:
                f.result()
    finally:
        packs.close()


def _download(store: ObjectStore, key: str, path: Path) -> None:
    """One object to a file, multipart through `recovery.transfer`, patiently retried."""
    if isinstance(store, _Patient):
        store._call(lambda: get_file(store.inner, key, path))
    else:
        get_file(store, key, path)


@dataclass
class _Scan:
    """The candidates of a restore, in chain order, and what was found along the way."""

    candidates: list[tuple[Manifest, ObjectStore]]
    notes: list[str]
    bad_signatures: list[ManifestError]


def _candidates(
    target: Target,
    pipeline: str,
    stores: dict[Kind, ObjectStore],
    key: bytes | None,
    allow_unsigned: bool,
) -> _Scan:
    kinds: list[Kind] = ["checkpoint", "savepoint"] if target == "latest" else [target[0]]
    found = _Scan([], [], [])
    for kind in kinds:
        rejected: list[ManifestError] = []
        manifests, notes = scan(
            stores[kind],
            pipeline,
            kind,
            signing_key=key,
            allow_unsigned=allow_unsigned,
            rejected=rejected,
        )
        found.candidates += [(m, stores[kind]) for m in manifests]
        found.notes += notes
        found.bad_signatures += [e for e in rejected if isinstance(e, SignatureError)]
    if target == "latest":
        return found
    kind, wanted = target
    for m, store in found.candidates:
        if wanted in (m.id, m.name):
            return _Scan([(m, store)], [], [])
    for note in found.notes:
        if note.startswith(f"{kind} {wanted} "):
            raise RestoreError(note)
    raise RestoreError(
        f"no complete {kind} {wanted!r} for pipeline {pipeline} in {stores[kind].url}"
    )


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
    allow_unsigned: bool = False,
    retry: RetryPolicy = STORE_RETRY,
    check: Callable[[Path, Manifest], list[str]] | None = None,
    partitions: Collection[int] | None = None,
) -> RestoreResult:
    """Restore the best valid snapshot into `recovery_dir` (see module doc).

    `partitions`: only these partitions (one process's share of a cluster,
    `recovery.placement.owned`); a fresh start then leaves only these in a
    directory it creates.

    Raises `StoreUnavailable` if the store cannot be read, `RestoreError` when
    the rules refuse every candidate (see module doc).
    """
    recovery_dir = Path(recovery_dir).absolute()
    recovery_dir.parent.mkdir(parents=True, exist_ok=True)
    settled = settle(recovery_dir)
    patient = _Patient(checkpoint_store, retry)
    stores: dict[Kind, ObjectStore] = {
        "checkpoint": patient,
        "savepoint": patient
        if savepoint_store is checkpoint_store
        else _Patient(savepoint_store, retry),
    }
    found = _candidates(target, pipeline, stores, signing_key, allow_unsigned)
    notes = settled + found.notes
    explicit = target != "latest"
    broken = [n for n in notes if " rejected: " in n]
    if strict and broken:
        raise RestoreError(f"{broken[0]} (strict: not falling back)")
    for n, (m, store) in enumerate(found.candidates):
        _refuse_signed_without_key(m, signing_key)
        _check_compatible(m, pipeline, partition_count)
        stage = stage_dir(recovery_dir)
        try:
            _materialize(m, store, signing_key, allow_unsigned, stage, partitions)
            if check is not None:  # e.g. the step-id check; raises RestoreError to refuse
                notes.extend(check(stage, m))
        except _Rejected as exc:
            shutil.rmtree(stage, ignore_errors=True)
            note = f"{m.kind} {m.id} rejected: {exc}"
            notes.append(note)
            if strict or explicit:
                raise RestoreError(
                    f"{note} (strict: not falling back)" if strict else note
                ) from None
            continue
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        swap_in(recovery_dir)
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
    if found.bad_signatures:
        raise RestoreError(
            f"no checkpoint or savepoint verifies with the signing key "
            f"({len(found.bad_signatures)} failed: {found.bad_signatures[0]}); if the key "
            f"was changed, set the one they were signed with{_FRESH_HINT}"
        )
    created = (
        init_partitions(recovery_dir, partition_count)
        if not partition_files(recovery_dir)
        else False
    )
    if created and partitions is not None:  # `init_partitions` made all of them
        for f in partition_files(recovery_dir):
            if part_index(f) not in partitions:
                f.unlink()
    what = (
        f"created {partition_count} empty partitions"
        if created
        else "kept the existing local partitions"
    )
    why = (
        "no valid checkpoint or savepoint"
        if found.candidates
        else "no checkpoint or savepoint found"
    )
    return RestoreResult(chosen="fresh", id=None, reason=f"{why}; {what}", notes=notes)
