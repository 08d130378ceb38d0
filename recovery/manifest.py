"""Checkpoint and savepoint manifests: what was stored, where, and its checksums.

Store layout (keys relative to the store URL)::

    {pipeline}/checkpoints/{id}/part-{i}.sqlite3.z     full copy of partition i (zlib)
    {pipeline}/checkpoints/{id}/delta-{i}.sqlite3.z    changes since the parent (incremental)
    {pipeline}/checkpoints/{id}/manifest.json          written LAST
    {pipeline}/savepoints/{id}/...                     same, never incremental

A snapshot directory without ``manifest.json`` is incomplete (its upload was
interrupted) and is never chosen. Ids sort by creation time.

Signing: with a key, ``signature`` is the HMAC-SHA256 of the canonical JSON of
every other field. The manifest lists each object's sha256, so the signature
covers the objects too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

from recovery.store import ObjectStore, StoreError

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "ManifestError",
    "PartitionEntry",
    "manifest_key",
    "new_id",
    "object_key",
    "scan",
    "snapshot_prefix",
]

FORMAT = 1
MANIFEST_NAME = "manifest.json"
Kind = Literal["checkpoint", "savepoint"]


class ManifestError(Exception):
    """A manifest is unreadable, unsigned or its signature does not match."""


@dataclass
class PartitionEntry:
    """One stored partition object.

    `sha256`/`size` are those of the stored (compressed) object; `digest` is
    the logical digest of the partition once restored (base plus deltas).
    """

    index: int
    object: str
    sha256: str
    size: int
    delta: bool
    digest: str
    keys: int
    commit_epoch: int | None = None


@dataclass
class Manifest:
    """Everything restore needs to find, verify and choose a snapshot."""

    id: str
    kind: Kind
    name: str | None
    pipeline: str
    created_at: str
    code_version: str
    partition_count: int
    partitions: list[PartitionEntry]
    source_positions: dict[str, Any] = field(default_factory=dict)
    state_bytes_by_step: dict[str, int] = field(default_factory=dict)
    base_id: str | None = None
    total_bytes: int = 0
    signature: str | None = None
    epoch: int | None = None
    parent_id: str | None = None
    chain: list[str] = field(default_factory=list)
    format: int = FORMAT

    @property
    def incremental(self) -> bool:
        return self.parent_id is not None

    def _payload(self) -> bytes:
        data = asdict(self)
        data.pop("signature")
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}
            data = {k: v for k, v in data.items() if k in known}
            data["partitions"] = [PartitionEntry(**p) for p in data["partitions"]]
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise ManifestError(f"unreadable manifest: {type(exc).__name__}: {exc}") from None

    def sign(self, key: bytes) -> None:
        self.signature = hmac.new(key, self._payload(), hashlib.sha256).hexdigest()

    def verify(self, key: bytes) -> None:
        """Raise ManifestError unless signed with `key` and untampered."""
        if not self.signature:
            raise ManifestError(f"{self.kind} {self.id} is not signed and a signing key is set")
        expected = hmac.new(key, self._payload(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, self.signature):
            raise ManifestError(
                f"{self.kind} {self.id}: signature mismatch (tampered or other key)"
            )

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (no per-partition details)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "pipeline": self.pipeline,
            "created_at": self.created_at,
            "code_version": self.code_version,
            "partition_count": self.partition_count,
            "epoch": self.epoch,
            "incremental": self.incremental,
            "base_id": self.base_id,
            "total_bytes": self.total_bytes,
            "signed": self.signature is not None,
            "source_positions": self.source_positions,
            "state_bytes_by_step": self.state_bytes_by_step,
        }


def new_id(kind: Kind, now: datetime | None = None) -> str:
    """A time-sortable id: ``ckpt-20260101T000000.000000Z-1a2b3c``."""
    now = now or datetime.now(UTC)
    tag = "ckpt" if kind == "checkpoint" else "sp"
    return f"{tag}-{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{secrets.token_hex(3)}"


def snapshot_prefix(pipeline: str, kind: Kind, snap_id: str) -> str:
    return f"{pipeline}/{kind}s/{snap_id}/"


def manifest_key(pipeline: str, kind: Kind, snap_id: str) -> str:
    return snapshot_prefix(pipeline, kind, snap_id) + MANIFEST_NAME


def object_key(pipeline: str, kind: Kind, snap_id: str, index: int, delta: bool) -> str:
    name = f"delta-{index}.sqlite3.z" if delta else f"part-{index}.sqlite3.z"
    return snapshot_prefix(pipeline, kind, snap_id) + name


def scan(store: ObjectStore, pipeline: str, kind: Kind) -> tuple[list[Manifest], list[str]]:
    """Complete manifests, newest first, and notes about incomplete/unreadable ones."""
    root = f"{pipeline}/{kind}s/"
    ids: dict[str, bool] = {}
    for key in store.list(root):
        snap_id, _, rest = key[len(root) :].partition("/")
        ids[snap_id] = ids.get(snap_id, False) or rest == MANIFEST_NAME
    manifests: list[Manifest] = []
    notes: list[str] = []
    for snap_id in sorted(ids, reverse=True):
        if not ids[snap_id]:
            notes.append(f"{kind} {snap_id} ignored: incomplete (no manifest; upload interrupted)")
            continue
        try:
            manifests.append(Manifest.from_json(store.get(manifest_key(pipeline, kind, snap_id))))
        except (ManifestError, StoreError) as exc:
            notes.append(f"{kind} {snap_id} rejected: {exc}")
    manifests.sort(key=lambda m: (m.created_at, m.id), reverse=True)
    return manifests, notes
