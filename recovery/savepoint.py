"""Savepoints: named, always-full snapshots under ``savepoints/``.

Checkpoint retention never touches them. `prune_savepoints` removes those
older than `max_age_s` and beyond the newest `max_count`, but always keeps at
least the newest one. Restoring one is `recovery.restore.restore(...,
target=("savepoint", id))`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from dataflows import metrics
from recovery.checkpoint import delete_snapshot, manifest_or_error, take_checkpoint
from recovery.manifest import Manifest, ManifestError, scan
from recovery.store import ObjectStore

__all__ = [
    "create_savepoint",
    "delete_savepoint",
    "describe",
    "list_savepoints",
    "prune_savepoints",
]


def create_savepoint(
    recovery_dir: Path,
    store: ObjectStore,
    *,
    pipeline: str,
    name: str | None = None,
    code_version: str = "",
    signing_key: bytes | None = None,
    timeout_s: float | None = None,
) -> Manifest:
    """Take a full savepoint of the partitions (the flow may be running or stopped)."""
    manifest = take_checkpoint(
        recovery_dir,
        store,
        pipeline=pipeline,
        code_version=code_version,
        kind="savepoint",
        name=name,
        signing_key=signing_key,
        timeout_s=timeout_s,
    )
    metrics.SAVEPOINTS.labels(pipeline=pipeline, state="completed").set(
        len(list_savepoints(store, pipeline))
    )
    return manifest


def list_savepoints(store: ObjectStore, pipeline: str) -> list[Manifest]:
    """Complete savepoints, newest first."""
    return scan(store, pipeline, "savepoint")[0]


def _resolve(store: ObjectStore, pipeline: str, id_or_name: str) -> str:
    for m in list_savepoints(store, pipeline):
        if id_or_name in (m.id, m.name):
            return m.id
    raise ManifestError(f"no savepoint {id_or_name!r} for pipeline {pipeline}")


def describe(store: ObjectStore, pipeline: str, id: str) -> Manifest:
    """The manifest of a savepoint, by id or name."""
    return manifest_or_error(store, pipeline, "savepoint", _resolve(store, pipeline, id))


def delete_savepoint(store: ObjectStore, pipeline: str, id: str) -> None:
    """Delete a savepoint (by id or name): manifest first, then its objects."""
    delete_snapshot(store, pipeline, "savepoint", _resolve(store, pipeline, id))


def prune_savepoints(
    store: ObjectStore,
    pipeline: str,
    *,
    max_age_s: float | None = None,
    max_count: int | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Delete savepoints older than `max_age_s` or beyond `max_count`; keep >= 1."""
    now = now or datetime.now(UTC)
    savepoints = list_savepoints(store, pipeline)
    doomed = []
    for i, m in enumerate(savepoints):
        if i == 0:
            continue
        too_many = max_count is not None and i >= max(1, max_count)
        age = (now - datetime.fromisoformat(m.created_at)).total_seconds()
        too_old = max_age_s is not None and age > max_age_s
        if too_many or too_old:
            doomed.append(m.id)
    for snap_id in doomed:
        delete_snapshot(store, pipeline, "savepoint", snap_id)
    return doomed
