"""Packed snapshot objects: every partition of a snapshot in a few objects, with an index.

Why: an object store charges per request (moto serves ~11 ms per request one at
a time; S3 has per-request latency and price), so 256 small objects per
checkpoint cost more than their bytes. A packed snapshot stores the compressed
bytes of every partition (a full sealed copy, or a delta of `recovery.delta`)
back to back in ``pack-{n}.sfpk`` objects of at most `PACK_LIMIT` bytes::

    {pipeline}/checkpoints/{id}/pack-0.sfpk     zstd frame of partition 0, of 1, ...
    {pipeline}/checkpoints/{id}/manifest.json   the index: per partition its pack
                                                object, offset, size, sha256, codec

The index lives in the (signed) manifest's `PartitionEntry` (``object``,
``offset``, ``size``, ``sha256``, ``codec="zstd"``). An entry without an
offset is the older format (one zlib object per partition) and is read
whole (`read_chunk` handles both).

Writing (`write_packs`): each file is compressed with zstd (`LEVEL`) in a
small thread pool (zstd and hashlib release the GIL) and appended to the pack
in partition order, its sha256 computed over the compressed bytes as they are
written (`PackWriter`; a full checkpoint compresses each copy in the job that
copies and digests it and appends it to the pack right away, in any order). Reading (`Packs`): every distinct object is downloaded once, in
parallel, into a local directory; `chunk` slices one partition out, checks
its length (a truncated object is detected) and sha256, and decompresses it.
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from recovery.manifest import Kind, PartitionEntry, snapshot_prefix

__all__ = [
    "CODEC",
    "FRAME_DIGEST",
    "PACK_LIMIT",
    "Chunk",
    "PackError",
    "Packs",
    "PackWriter",
    "compress",
    "compress_bytes",
    "pack_key",
    "read_chunk",
    "write_packs",
]

CODEC = "zstd"
LEVEL = 2  # the size of level 3 on sealed partitions (73 KB of 748 KB) in 70% of its time
# The `PartitionEntry.digest` of a full partition stored as one zstd frame whose content
# checksum (XXH64, written by `compress`) the decompressor checks: the partition restored
# is exactly the file the checkpoint compressed (its bytes checked by the chunk's sha256).
FRAME_DIGEST = "zstd-frame"
PACK_LIMIT = 512 * 1024 * 1024
_WORKERS = 2


class PackError(Exception):
    """A packed (or legacy) object is truncated, corrupted or does not decompress."""


@dataclass(frozen=True)
class Chunk:
    """Where partition `index`'s compressed bytes are: pack number, offset, size, sha256."""

    index: int
    pack: int
    offset: int
    size: int
    sha256: str


def pack_key(pipeline: str, kind: Kind, snap_id: str, pack: int) -> str:
    return snapshot_prefix(pipeline, kind, snap_id) + f"pack-{pack}.sfpk"


def compress(path: Path) -> bytes:
    """The file at `path` as one zstd frame: what a pack stores for it (`compress_bytes`)."""
    return compress_bytes(path.read_bytes())


def compress_bytes(data: bytes) -> bytes:
    """`data` as one zstd frame (`LEVEL`, with the content checksum `read_chunk` checks)."""
    return zstandard.ZstdCompressor(level=LEVEL, write_checksum=True).compress(data)


def write_packs(files: Iterable[tuple[int, Path]], out_dir: Path) -> tuple[list[Chunk], list[Path]]:
    """Compress `(index, file)` pairs into ``pack-N.sfpk`` files in `out_dir`.

    Returns the chunk of every index (in the given order) and the pack files."""
    items = list(files)
    writer = PackWriter(out_dir)
    try:
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            frames = pool.map(compress, [p for _, p in items])
            chunks = [writer.add(i, data) for (i, _), data in zip(items, frames, strict=True)]
    finally:
        packs = writer.close()
    return chunks, packs


class PackWriter:
    """``pack-N.sfpk`` files in `out_dir` that compressed frames (`compress`) are appended
    to, from any thread (`add` holds a lock), in whatever order they come: each chunk
    records its own offset, so a frame is written as soon as it is ready and none is
    kept in memory. A new pack starts past `PACK_LIMIT` bytes."""

    def __init__(self, out_dir: Path) -> None:
        self._dir = Path(out_dir)
        self._lock = threading.Lock()
        self._packs: list[Path] = []
        self._out: BinaryIO | None = None
        self._offset = 0

    def add(self, index: int, data: bytes) -> Chunk:
        """Append partition `index`'s frame; its chunk (sha256 over the written bytes)."""
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            if self._out is None or (self._offset and self._offset + len(data) > PACK_LIMIT):
                if self._out is not None:
                    self._out.close()
                self._packs.append(self._dir / f"pack-{len(self._packs)}.sfpk")
                self._out = open(self._packs[-1], "wb")
                self._offset = 0
            self._out.write(data)
            chunk = Chunk(index, len(self._packs) - 1, self._offset, len(data), digest)
            self._offset += len(data)
            return chunk

    def close(self) -> list[Path]:
        """Close the current pack; every pack file, in order."""
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None
            return list(self._packs)


def read_chunk(raw: bytes, entry: PartitionEntry) -> bytes:
    """Check `raw` (the entry's stored bytes) against the entry, and decompress it."""
    if len(raw) != entry.size:
        raise PackError(
            f"object {entry.object} is corrupted or truncated ({len(raw)} of {entry.size} bytes)"
        )
    if hashlib.sha256(raw).hexdigest() != entry.sha256:
        raise PackError(f"object {entry.object} is corrupted or truncated (sha256 mismatch)")
    try:
        if entry.codec == CODEC:
            return zstandard.ZstdDecompressor().decompress(raw)
        return zlib.decompress(raw)
    except (zstandard.ZstdError, zlib.error) as exc:
        raise PackError(f"object {entry.object} does not decompress: {exc}") from None


class Packs:
    """The stored objects of some snapshot entries, downloaded once each into `dir`.

    `download(key, path)` fetches one object to a local file (raising the
    store's errors: `StoreNotFound` for a missing object)."""

    def __init__(self, download: Callable[[str, Path], None], dir: Path) -> None:
        self._download = download
        self._dir = Path(dir)
        self._paths: dict[str, Path] = {}

    def fetch(self, entries: Iterable[PartitionEntry], parallel: int = 8) -> None:
        """Download every distinct object of `entries` (in parallel, each once)."""
        keys = sorted({e.object for e in entries} - set(self._paths))
        paths = {k: self._dir / f".obj-{len(self._paths) + i}" for i, k in enumerate(keys)}
        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(keys)))) as pool:
            for future in [pool.submit(self._download, k, p) for k, p in paths.items()]:
                future.result()
        self._paths.update(paths)

    def chunk(self, entry: PartitionEntry) -> bytes:
        """The decompressed bytes of `entry` (fetched first if needed); PackError if bad."""
        if entry.object not in self._paths:
            self.fetch([entry], parallel=1)
        with open(self._paths[entry.object], "rb") as f:
            if entry.offset is None:
                raw = f.read()
            else:
                f.seek(entry.offset)
                raw = f.read(entry.size)
        return read_chunk(raw, entry)

    def close(self) -> None:
        for path in self._paths.values():
            path.unlink(missing_ok=True)
        self._paths.clear()
