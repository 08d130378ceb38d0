"""Checkpoint and savepoint manifests: what was stored, where, and its checksums.

Store layout (keys relative to the store URL)::

    {pipeline}/checkpoints/{id}/pack-{n}.sfpk          every partition's bytes, packed (zstd;
                                                       offsets in the entries: recovery.pack)
    {pipeline}/checkpoints/{id}/part-{i}.sqlite3.z     older format: full copy of partition i (zlib)
    {pipeline}/checkpoints/{id}/delta-{i}.sqlite3.z    older format: changes since the parent
    {pipeline}/checkpoints/{id}/manifest.json          written LAST
    {pipeline}/savepoints/{id}/...                     same, never incremental

A snapshot directory without ``manifest.json`` is incomplete (its upload was
interrupted) and is never chosen. Ids sort by creation time.

Signing: with a key, ``signature`` is the HMAC-SHA256 of the canonical JSON of
every other field. The manifest lists each object's sha256, so the signature
covers the objects too. A stored manifest is checked against its signature
on the raw document, BEFORE any field is read (`parse_manifest`): what a
reader may say about a manifest that fails is only where it was found (its
kind and id from the store key), never what it claims (pipeline, counts).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

from recovery.store import ObjectStore, StoreNotFound

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "ManifestError",
    "PartitionEntry",
    "SignatureError",
    "manifest_key",
    "new_id",
    "object_key",
    "parse_manifest",
    "scan",
    "snapshot_ids",
    "snapshot_prefix",
]

# 1: every entry's `digest` is a logical digest (``ms1:`` or the older ordered sha256).
# 2: a full checkpoint's (and a savepoint's) entries may carry `recovery.pack.FRAME_DIGEST`
#    (the partition is the zstd frame's content, checked by sha256 and the frame checksum;
#    StreamForge before format 2 rejects those as digest mismatches).
FORMAT = 2
MANIFEST_NAME = "manifest.json"
Kind = Literal["checkpoint", "savepoint"]


class ManifestError(Exception):
    """A manifest is unreadable, unsigned or its signature does not match."""


class SignatureError(ManifestError):
    """Unsigned while a signing key is set, or the signature does not match."""


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _hmac(key: bytes, doc: dict[str, Any]) -> str:
    return hmac.new(key, _canonical(doc), hashlib.sha256).hexdigest()


@dataclass
class PartitionEntry:
    """One stored partition object.

    `sha256`/`size` are those of the stored (compressed) object; `digest` is
    the logical digest of the partition once restored (base plus deltas), or for a
    full partition `recovery.pack.FRAME_DIGEST` (format 2: the bytes are the check).
    """

    index: int
    object: str
    sha256: str
    size: int
    delta: bool
    digest: str
    keys: int
    commit_epoch: int | None = None
    # Packed snapshots (recovery.pack): `object` is the shared pack, `sha256`/`size`
    # those of this partition's bytes at `offset` in it. None = the older format
    # (one zlib object per partition).
    offset: int | None = None
    codec: str = "zlib"


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

    def _unsigned(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("signature")
        return data

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse without any signature check (see `parse_manifest` for stored ones)."""
        return cls._from_document(_document(text))

    @classmethod
    def _from_document(cls, data: dict[str, Any]) -> Manifest:
        try:
            known = {f.name for f in fields(cls)}
            data = {k: v for k, v in data.items() if k in known}
            data["partitions"] = [PartitionEntry(**p) for p in data["partitions"]]
            return cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ManifestError(f"unreadable manifest: {type(exc).__name__}: {exc}") from None

    def sign(self, key: bytes) -> None:
        self.signature = _hmac(key, self._unsigned())

    def verify(self, key: bytes) -> None:
        """Raise SignatureError unless signed with `key` and untampered."""
        _verify(asdict(self), key, f"{self.kind} {self.id}")

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


def _document(text: str | bytes) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"unreadable manifest: {type(exc).__name__}: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError("unreadable manifest: not a JSON object")
    return doc


def _verify(doc: dict[str, Any], key: bytes, where: str) -> None:
    """Check `doc`'s signature over the rest of `doc`; reads no other field."""
    signature = doc.get("signature")
    if not signature:
        raise SignatureError(f"{where} is not signed and a signing key is set")
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    if not isinstance(signature, str) or not hmac.compare_digest(_hmac(key, unsigned), signature):
        raise SignatureError(f"{where}: signature mismatch (tampered or signed with another key)")


def parse_manifest(
    text: str | bytes, where: str, key: bytes | None, *, allow_unsigned: bool = False
) -> Manifest:
    """A stored manifest, its signature verified (with `key`) BEFORE any field is read.

    `where` names it by its store location (``checkpoint ckpt-...``), for
    messages. `allow_unsigned`: with a key, accept a manifest without any
    signature (never a wrong one). Raises SignatureError / ManifestError.
    """
    doc = _document(text)
    if key is not None and not (allow_unsigned and not doc.get("signature")):
        _verify(doc, key, where)
    return Manifest._from_document(doc)


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


def snapshot_ids(store: ObjectStore, pipeline: str, kind: Kind) -> tuple[list[str], list[str]]:
    """Ids that have a manifest, newest id first, and notes about incomplete ones."""
    root = f"{pipeline}/{kind}s/"
    ids: dict[str, bool] = {}
    for key in store.list(root):
        snap_id, _, rest = key[len(root) :].partition("/")
        ids[snap_id] = ids.get(snap_id, False) or rest == MANIFEST_NAME
    notes = [
        f"{kind} {snap_id} ignored: incomplete (no manifest; upload interrupted)"
        for snap_id in sorted(ids, reverse=True)
        if not ids[snap_id]
    ]
    return [i for i in sorted(ids, reverse=True) if ids[i]], notes


def scan(
    store: ObjectStore,
    pipeline: str,
    kind: Kind,
    *,
    signing_key: bytes | None = None,
    allow_unsigned: bool = False,
    rejected: list[ManifestError] | None = None,
) -> tuple[list[Manifest], list[str]]:
    """Complete manifests, newest first, and notes about incomplete/unreadable ones.

    With `signing_key`, a manifest whose signature fails (`parse_manifest`) is
    a note, never a manifest; every rejection is also appended to `rejected`.
    A manifest that vanished after the listing is a note; any other store
    error (unavailable, refused) raises `StoreError`: a manifest that could not
    be read is not a rejected one.
    """
    ids, notes = snapshot_ids(store, pipeline, kind)
    manifests: list[Manifest] = []
    for snap_id in ids:
        where = f"{kind} {snap_id}"
        try:
            raw = store.get(manifest_key(pipeline, kind, snap_id))
        except StoreNotFound:
            notes.append(f"{where} ignored: its manifest vanished (deleted while listing)")
            continue
        try:
            manifests.append(parse_manifest(raw, where, signing_key, allow_unsigned=allow_unsigned))
        except ManifestError as exc:
            notes.append(f"{where} rejected: {exc}")
            if rejected is not None:
                rejected.append(exc)
    manifests.sort(key=lambda m: (m.created_at, m.id), reverse=True)
    return manifests, notes
