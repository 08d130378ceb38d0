"""Savepoints: named, always-full snapshots under ``savepoints/``.

Checkpoint retention never touches them. `prune_savepoints` removes those
older than `max_age_s` and beyond the newest `max_count`, but always keeps at
least the newest one. Restoring one is `recovery.restore.restore(...,
target=("savepoint", id))`.

Pinned savepoints (`pin` / `unpin`, `create_savepoint(..., pin=True)`) are
never pruned nor deleted (unpin first). A pin is the marker object
``savepoints/{id}/pinned.json`` (the truth for prune, on every store) plus, on
S3, the object tag ``streamforge-pinned=true`` on every object of the
savepoint; every object of an unpinned savepoint is tagged
``streamforge-pinned=false``. S3 lifecycle filters can match a tag but not
the absence of one, so the rule `lifecycle_configuration` renders expires only
objects under the savepoints prefix tagged ``false`` (Filter ``And`` of
``Prefix`` and ``Tags``): a pinned savepoint, or one whose tagging failed,
is never expired by the bucket.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dataflows import metrics
from recovery.checkpoint import delete_snapshot, manifest_or_error, take_checkpoint
from recovery.manifest import Manifest, ManifestError, scan, snapshot_prefix
from recovery.store import ObjectStore, S3Store

__all__ = [
    "PIN_TAG",
    "create_savepoint",
    "delete_savepoint",
    "describe",
    "is_pinned",
    "lifecycle_configuration",
    "list_savepoints",
    "pin",
    "prune_savepoints",
    "unpin",
]

PIN_TAG = "streamforge-pinned"
PIN_MARKER = "pinned.json"


def create_savepoint(
    recovery_dir: Path,
    store: ObjectStore,
    *,
    pipeline: str,
    name: str | None = None,
    code_version: str = "",
    signing_key: bytes | None = None,
    timeout_s: float | None = None,
    pinned: bool = False,
) -> Manifest:
    """Take a full savepoint of the partitions (the flow may be running or stopped);
    its objects are tagged unpinned, or it is pinned (`pinned`)."""
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
    if pinned:
        pin(store, pipeline, manifest.id)
    else:
        _tag(store, pipeline, manifest.id, pinned=False)
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
    """Delete a savepoint (by id or name): manifest first, then its objects; a pinned one is refused."""
    snap_id = _resolve(store, pipeline, id)
    if is_pinned(store, pipeline, snap_id):
        raise ManifestError(f"savepoint {snap_id} is pinned: unpin it first (savepoint unpin {snap_id})")
    delete_snapshot(store, pipeline, "savepoint", snap_id)


def _marker(pipeline: str, snap_id: str) -> str:
    return snapshot_prefix(pipeline, "savepoint", snap_id) + PIN_MARKER


def is_pinned(store: ObjectStore, pipeline: str, snap_id: str) -> bool:
    """True if the savepoint `snap_id` carries the pin marker."""
    return store.exists(_marker(pipeline, snap_id))


def _tag(store: ObjectStore, pipeline: str, snap_id: str, *, pinned: bool) -> int:
    """Set `streamforge-pinned` on every object of the savepoint (S3 only); objects tagged.

    Other tags of an object are kept (GetObjectTagging, then PutObjectTagging
    of the merged set: PutObjectTagging replaces the whole set).
    """
    if not isinstance(store, S3Store):
        return 0
    client, bucket = store._client, store.bucket
    keys = store.list(snapshot_prefix(pipeline, "savepoint", snap_id))
    for key in keys:
        full = store._key(key)

        def put(full: str = full) -> None:
            tags = client.get_object_tagging(Bucket=bucket, Key=full)["TagSet"]
            tags = [t for t in tags if t["Key"] != PIN_TAG]
            tags.append({"Key": PIN_TAG, "Value": "true" if pinned else "false"})
            client.put_object_tagging(Bucket=bucket, Key=full, Tagging={"TagSet": tags})

        store._call("tag", key, put)
    return len(keys)


def pin(store: ObjectStore, pipeline: str, id: str) -> str:
    """Pin a savepoint (by id or name): marker first (prune keeps it), then the tags."""
    snap_id = _resolve(store, pipeline, id)
    store.put(_marker(pipeline, snap_id),
              json.dumps({"pinned_at": datetime.now(UTC).isoformat()}).encode())
    _tag(store, pipeline, snap_id, pinned=True)
    return snap_id


def unpin(store: ObjectStore, pipeline: str, id: str) -> str:
    """Unpin a savepoint: marker removed first; on a tagging failure its objects stay
    tagged pinned (kept by the bucket, prunable by StreamForge), never the reverse."""
    snap_id = _resolve(store, pipeline, id)
    store.delete(_marker(pipeline, snap_id))
    _tag(store, pipeline, snap_id, pinned=False)
    return snap_id


def lifecycle_configuration(key_prefix: str, pipeline: str, max_age_s: float) -> dict[str, Any]:
    """The bucket lifecycle configuration (`aws s3api put-bucket-lifecycle-configuration
    --lifecycle-configuration file://...`) expiring unpinned savepoint objects of
    `pipeline` after `max_age_s` (rounded up to whole days, S3's unit).

    `key_prefix`: the store's prefix inside the bucket (`s3://bucket/PREFIX`).
    """
    if max_age_s <= 0:
        raise ValueError(f"savepoints.max-age must be > 0, got {max_age_s}")
    prefix = "/".join(p for p in (key_prefix.strip("/"), pipeline) if p) + "/savepoints/"
    return {
        "Rules": [
            {
                "ID": f"streamforge-{pipeline}-expire-unpinned-savepoints",
                "Status": "Enabled",
                "Filter": {"And": {"Prefix": prefix, "Tags": [{"Key": PIN_TAG, "Value": "false"}]}},
                "Expiration": {"Days": max(1, math.ceil(max_age_s / 86400))},
            }
        ]
    }


def prune_savepoints(
    store: ObjectStore,
    pipeline: str,
    *,
    max_age_s: float | None = None,
    max_count: int | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Delete savepoints older than `max_age_s` or beyond `max_count`; keep >= 1 and every pinned one."""
    now = now or datetime.now(UTC)
    savepoints = list_savepoints(store, pipeline)
    doomed = []
    for i, m in enumerate(savepoints):
        if i == 0 or is_pinned(store, pipeline, m.id):
            continue
        too_many = max_count is not None and i >= max(1, max_count)
        age = (now - datetime.fromisoformat(m.created_at)).total_seconds()
        too_old = max_age_s is not None and age > max_age_s
        if too_many or too_old:
            doomed.append(m.id)
    for snap_id in doomed:
        delete_snapshot(store, pipeline, "savepoint", snap_id)
    return doomed
