"""Packed checkpoints: pack/index round trip, corruption and truncation, parallel
downloads, multipart transfers on moto over HTTP, the one-pass sealed copy, and
restoring checkpoints of the older one-object-per-partition format.

The partitions are real Bytewax 0.21.1 partitions (`tests.test_recovery_support`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sqlite3
import threading
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from recovery import pack, transfer
from recovery.checkpoint import take_checkpoint
from recovery.manifest import (
    Manifest,
    PartitionEntry,
    _hmac,
    manifest_key,
    object_key,
)
from recovery.pack import PackError, Packs, write_packs
from recovery.partitions import (
    DIGEST_PREFIX,
    PartitionError,
    connect,
    copy_partition,
    copy_sealed,
    digest_matches,
    init_partitions,
    legacy_digest,
    logical_digest,
    partition_files,
    seal_copy,
)
from recovery.positions import PositionRows
from recovery.restore import restore
from recovery.store import ObjectStore, StoreNotFound, open_store
from tests.fixtures.s3 import S3Target
from tests.test_recovery_support import (
    counting_flow,
    final_sums,
    live_resume_epoch,
    run,
    uploaded_digests,
)

PIPE = "orders"
KEY = b"pack-test-signing-key"
# keys re-counted over several epochs, some discarded (None): several rows per
# key and NULL rows in the live partitions, as sealing meets them
ITEMS = [(f"k{i % 40}", None if i % 97 == 0 else 1) for i in range(600)]


@pytest.fixture
def live(tmp_path: Path) -> Path:
    rd = tmp_path / "rec"
    init_partitions(rd, 3)
    run(counting_flow(ITEMS, []), rd)
    return rd


def _schema(path: Path) -> list:
    conn = connect(path, readonly=True)
    try:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        return [rows, conn.execute("PRAGMA user_version").fetchone()]
    finally:
        conn.close()


def test_copy_sealed_is_backup_then_seal(tmp_path: Path, live: Path) -> None:
    r = live_resume_epoch(live)
    assert r is not None
    for part in partition_files(live):
        for epoch in (r, r - 3, None):
            a, b = tmp_path / "a" / part.name, tmp_path / "b" / part.name
            a.parent.mkdir(exist_ok=True)
            b.parent.mkdir(exist_ok=True)
            copy_partition(part, a)
            sealed = seal_copy(a, epoch)
            info = copy_sealed(part, b, epoch)
            # (seal_copy's dropped_rows also counts the clamped frontier rows)
            assert replace(info, dropped_rows=0) == replace(sealed, dropped_rows=0)
            assert logical_digest(a) == logical_digest(b)
            assert _schema(a) == _schema(b)  # Bytewax's tables and migration version


def test_a_large_partition_is_copied_and_sealed_on_disk_with_the_same_result(
    tmp_path: Path, live: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above `IN_MEMORY_MAX_BYTES` the copy is a file (a few big partitions must not be
    held in memory by the checkpoint's jobs): the same sealed rows, counts, state bytes
    and schema."""
    from recovery import partitions

    r = live_resume_epoch(live)
    part = partition_files(live)[0]
    in_memory = copy_sealed(part, tmp_path / "mem.sqlite3", r)
    monkeypatch.setattr(partitions, "IN_MEMORY_MAX_BYTES", 0)
    monkeypatch.setattr(partitions.sqlite3, "connect", _no_memory(partitions.sqlite3.connect))
    on_disk = copy_sealed(part, tmp_path / "disk.sqlite3", r)
    assert on_disk == in_memory and on_disk.keys > 0
    assert _rows(tmp_path / "disk.sqlite3") == _rows(tmp_path / "mem.sqlite3")
    assert _schema(tmp_path / "disk.sqlite3") == _schema(tmp_path / "mem.sqlite3")


def _no_memory(connect: Any) -> Any:
    def no_memory(database: Any, *args: Any, **kwargs: Any) -> Any:
        assert database != ":memory:", "copied in memory above IN_MEMORY_MAX_BYTES"
        return connect(database, *args, **kwargs)

    return no_memory


def test_copy_sealed_refuses_a_copy_committed_at_r(tmp_path: Path, live: Path) -> None:
    """As `seal_copy`: Bytewax's GC at commit epoch R dropped the rows a resume at R needs."""
    r = live_resume_epoch(live)
    run(counting_flow(ITEMS, []), live, backup_s=0)  # resumes at R, commits epoch R
    with pytest.raises(PartitionError, match=f"committed epoch {r} .*consistent epoch {r}"):
        copy_sealed(partition_files(live)[0], tmp_path / "part-0.sqlite3", r)


def _rows(path: Path) -> list:
    conn = connect(path, readonly=True)
    try:
        return conn.execute(
            "SELECT rowid, step_id, state_key, snap_epoch, ser_change FROM snaps ORDER BY rowid"
        ).fetchall()
    finally:
        conn.close()


def test_copy_sealed_rewrites_no_row(tmp_path: Path, live: Path) -> None:
    """The sealed copy is the page copy minus the dropped rows: every kept row is the live
    row itself (same rowid), so sealing costs the rows it drops, not the state. The
    one-pass copy that re-inserted the kept rows gave them new rowids (fails there)."""
    r = live_resume_epoch(live)
    part = partition_files(live)[0]
    info = copy_sealed(part, tmp_path / part.name, r)
    live_rows = {row[0]: row for row in _rows(part)}
    kept = _rows(tmp_path / part.name)
    assert info.keys == len(kept) > 0 and info.dropped_rows > 0
    assert all(live_rows[row[0]] == row for row in kept)


def _scans(conn: sqlite3.Connection, statements: list[str]) -> list[str]:
    """The statements among `statements` whose query plan scans ``snaps`` whole."""
    out = []
    for sql in statements:
        if not sql.lstrip().upper().startswith("SELECT"):
            continue
        plan = conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
        if any(str(row[-1]).startswith("SCAN snaps") for row in plan):
            out.append(sql)
    return out


def test_source_positions_read_only_the_input_steps_rows(tmp_path: Path) -> None:
    """A checkpoint reads the input steps' positions in each partition's job: the step ids
    come from index seeks and only those steps' rows are read, never a scan of the
    operators' data rows (the GROUP BY step_id and LIKE filter scanned every row)."""
    rd = tmp_path / "rec"
    init_partitions(rd, 1)
    path = partition_files(rd)[0]
    conn = connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, 1, ?)",
            [("f.sum.stateful_batch", f"k{i}", pickle.dumps(i)) for i in range(300)]
            + [("f.inp", "topic-0", pickle.dumps(7)), ("f.inp", "topic-1", pickle.dumps(9)),
               ("f.out", "sink", None)],
        )
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    rows = PositionRows()
    rows.add(conn)
    conn.set_trace_callback(None)
    try:
        assert rows.positions() == {"f.inp": {"topic-0": 7, "topic-1": 9}}
        assert statements and _scans(conn, statements) == []
    finally:
        conn.close()


def test_copy_sealed_past_the_commit_epoch_is_the_whole_seal(tmp_path: Path) -> None:
    """A partition as Bytewax's GC leaves it at commit epoch C (one row per key at or below
    C: `RecoveryCommitter::commit`, src/recovery.rs) with rows of several epochs above C:
    the sealed copy keeps exactly the newest row below R of every key that has a state
    (as the whole-table seal `_SUPERSEDED` finds), counts them and sums their state bytes
    per step; a copy without a commit row (no GC yet) the same."""
    c, r = 5, 10
    rows = [("s1", "a", 3, b"a3"), ("s1", "b", 4, b"b4"), ("s1", "b", 6, b"b6"),
            ("s1", "b", 8, b"bb8"), ("s1", "c", 7, b"c7"), ("s1", "c", 9, b"cc9"),
            ("s1", "d", 2, b"d2"), ("s1", "d", 6, None), ("s1", "e", 5, b"e5"),
            ("s1", "e", 12, b"e12"), ("s1", "f", 9, None), ("s2", "a", 6, b"x6"),
            ("s2", "a", 7, b"xx7"), ("s2", "g", 1, None)]
    kept = {("s1", "a", 3), ("s1", "b", 8), ("s1", "c", 9), ("s1", "e", 5), ("s2", "a", 7)}
    for commit in (c, None):
        rd = tmp_path / f"rec-{commit}"
        init_partitions(rd, 1)
        part = partition_files(rd)[0]
        conn = sqlite3.connect(part)
        conn.executemany("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
                         "VALUES (?, ?, ?, ?)", rows)
        if commit is not None:
            conn.execute("INSERT INTO commits (part_index, commit_epoch) VALUES (0, ?)", (commit,))
        conn.commit()
        conn.close()
        info = copy_sealed(part, tmp_path / f"sealed-{commit}.sqlite3", r)
        got = {row[1:4] for row in _rows(tmp_path / f"sealed-{commit}.sqlite3")}
        assert got == kept
        assert (info.keys, info.dropped_rows, info.commit_epoch) == (5, len(rows) - 5, commit)
        assert info.state_bytes == {"s1": 2 + 3 + 3 + 2, "s2": 3}


def test_a_full_checkpoint_gathers_positions_and_state_bytes_in_its_jobs(
    tmp_path: Path, live: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Source positions and state bytes per step come from each partition's job (one open
    of each copy): the same figures as reading every sealed copy again afterwards, which
    the checkpoint no longer does."""
    from recovery import checkpoint, positions

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a full checkpoint read every copy again")

    for name in ("source_positions", "state_bytes_by_step"):
        monkeypatch.setattr(checkpoint, name, never, raising=False)
    store = open_store(f"file://{tmp_path}/store")
    m = take_checkpoint(live, store, pipeline=PIPE)
    monkeypatch.undo()
    r = live_resume_epoch(live)
    copies = []
    for part in partition_files(live):
        copy_sealed(part, tmp_path / part.name, r)
        copies.append(tmp_path / part.name)
    assert m.source_positions == positions.source_positions(copies) != {}
    assert m.state_bytes_by_step == positions.state_bytes_by_step(copies) != {}


def _files(tmp_path: Path, sizes: list[int]) -> list[tuple[int, Path]]:
    out = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"in-{i}"
        path.write_bytes(os.urandom(size // 2) + bytes(size - size // 2))
        out.append((i * 2, path))  # partition indexes need not be contiguous
    return out


def _entries(chunks: list[pack.Chunk], keys: list[str]) -> list[PartitionEntry]:
    return [
        PartitionEntry(
            index=c.index, object=keys[c.pack], sha256=c.sha256, size=c.size, delta=False,
            digest="", keys=0, offset=c.offset, codec=pack.CODEC,
        )
        for c in chunks
    ]


def _stored(tmp_path: Path, sizes: list[int]) -> tuple[ObjectStore, list, list[PartitionEntry]]:
    files = _files(tmp_path, sizes)
    chunks, packs = write_packs(files, tmp_path)
    store = open_store(f"file://{tmp_path}/store")
    keys = [f"p/pack-{n}" for n in range(len(packs))]
    for key, path in zip(keys, packs, strict=True):
        transfer.put_file(store, key, path)
    return store, files, _entries(chunks, keys)


def _packs(store: ObjectStore, into: Path) -> Packs:
    into.mkdir(exist_ok=True)
    return Packs(lambda key, path: transfer.get_file(store, key, path), into)


def test_pack_round_trip_and_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pack, "PACK_LIMIT", 30_000)  # several packs
    store, files, entries = _stored(tmp_path, [20_000, 1, 0, 50_000, 7_000])
    assert [e.index for e in entries] == [i for i, _ in files]
    by_pack: dict[str, list[PartitionEntry]] = {}
    for e in entries:
        by_pack.setdefault(e.object, []).append(e)
    assert len(by_pack) >= 2
    for chunks in by_pack.values():  # back to back from 0; over the limit only if alone
        assert [c.offset for c in chunks] == [sum(c.size for c in chunks[:i]) for i in range(len(chunks))]
        assert sum(c.size for c in chunks) <= 30_000 or len(chunks) == 1
    readers = _packs(store, tmp_path / "dl")
    readers.fetch(entries)
    for (_, path), entry in zip(files, entries, strict=True):
        assert readers.chunk(entry) == path.read_bytes()
    readers.close()
    assert list((tmp_path / "dl").iterdir()) == []


def _rewrite(store: ObjectStore, key: str, edit) -> None:  # type: ignore[no-untyped-def]
    store.put(key, edit(store.get(key)))


def test_one_corrupted_partition_in_a_pack_is_detected(tmp_path: Path) -> None:
    store, files, entries = _stored(tmp_path, [4_000, 4_000, 4_000])
    bad = entries[1]
    assert bad.object == entries[0].object == entries[2].object and bad.offset is not None

    def flip(data: bytes) -> bytes:
        at = bad.offset + bad.size // 2  # type: ignore[operator]
        return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]

    _rewrite(store, bad.object, flip)
    readers = _packs(store, tmp_path / "dl")
    with pytest.raises(PackError, match="sha256 mismatch"):
        readers.chunk(bad)
    assert readers.chunk(entries[0]) == files[0][1].read_bytes()  # the others still verify
    assert readers.chunk(entries[2]) == files[2][1].read_bytes()


def test_truncated_pack_is_detected(tmp_path: Path) -> None:
    store, files, entries = _stored(tmp_path, [4_000, 4_000])
    _rewrite(store, entries[0].object, lambda data: data[:-10])
    readers = _packs(store, tmp_path / "dl")
    assert readers.chunk(entries[0]) == files[0][1].read_bytes()
    with pytest.raises(PackError, match=r"truncated \(\d+ of \d+ bytes\)"):
        readers.chunk(entries[1])


def test_legacy_entry_and_undecompressable_bytes(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/store")
    raw = zlib.compress(b"legacy partition bytes", 3)
    store.put("old/part-0.sqlite3.z", raw)
    legacy = PartitionEntry(
        index=0, object="old/part-0.sqlite3.z", sha256=hashlib.sha256(raw).hexdigest(),
        size=len(raw), delta=False, digest="", keys=0,
    )
    assert (legacy.offset, legacy.codec) == (None, "zlib")
    assert _packs(store, tmp_path / "dl").chunk(legacy) == b"legacy partition bytes"
    junk = b"not zstd at all"
    bad = replace(legacy, sha256=hashlib.sha256(junk).hexdigest(), size=len(junk), offset=0,
                  codec=pack.CODEC)
    store.put(bad.object, junk)
    with pytest.raises(PackError, match="does not decompress"):
        _packs(store, tmp_path / "dl2").chunk(bad)


def test_downloads_run_in_parallel_and_land_under_their_own_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first pack's download waits until the second one's has started: only a
    parallel fetch finishes; each pack's bytes still end up under its own key."""
    monkeypatch.setattr(pack, "PACK_LIMIT", 2_000)
    store, files, entries = _stored(tmp_path, [3_000, 3_000])
    assert [e.object for e in entries] == ["p/pack-0", "p/pack-1"]
    started_second = threading.Event()

    def download(key: str, path: Path) -> None:
        if key == "p/pack-0":
            assert started_second.wait(60), "downloads ran one after the other"
        else:
            started_second.set()
        transfer.get_file(store, key, path)

    readers = _packs(store, tmp_path / "dl")
    readers._download = download  # type: ignore[method-assign]
    readers.fetch(entries, parallel=2)
    assert [readers.chunk(e) for e in entries] == [p.read_bytes() for _, p in files]


def test_multipart_transfer_through_moto(
    tmp_path: Path, s3_bucket: S3Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(transfer, "PART_SIZE", 5 * 1024 * 1024)  # S3's minimum part size
    store = open_store(s3_bucket.url, endpoint_url=s3_bucket.endpoint_url)
    src = tmp_path / "big"
    src.write_bytes(os.urandom(12 * 1024 * 1024))
    transfer.put_file(store, "x/pack-0.sfpk", src)
    head = boto3.client("s3", endpoint_url=s3_bucket.endpoint_url).head_object(
        Bucket=s3_bucket.bucket, Key="streamforge/x/pack-0.sfpk"
    )
    assert head["ETag"].strip('"').endswith("-3")  # S3's ETag of a 3-part upload
    dst = tmp_path / "back"
    transfer.get_file(store, "x/pack-0.sfpk", dst)
    assert dst.read_bytes() == src.read_bytes()
    with pytest.raises(StoreNotFound):
        transfer.get_file(store, "x/missing.sfpk", tmp_path / "none")
    assert not (tmp_path / "none").exists() and not list(tmp_path.glob(".none*"))


def _legacy_digests(store: ObjectStore, m: Manifest, into: Path) -> list[str]:
    """The ordered sha256 digests (`legacy_digest`) of `m`'s partitions once restored."""
    restore(into, checkpoint_store=store, savepoint_store=store, pipeline=m.pipeline,
            partition_count=m.partition_count, signing_key=KEY, target=("checkpoint", m.id))
    return [legacy_digest(p) for p in partition_files(into)]


def _to_old_format(store: ObjectStore, m: Manifest, key: bytes, digests: list[str]) -> None:
    """Rewrite a packed checkpoint as today's main wrote it: one zlib object per
    partition (``part-N.sqlite3.z`` / ``delta-N.sqlite3.z``), entries without
    ``offset``/``codec``, the older (ordered) `digests`, signed over exactly those fields."""
    readers = Packs(lambda k, path: transfer.get_file(store, k, path), Path(store.root) / ".dl")  # type: ignore[attr-defined]
    Path(store.root, ".dl").mkdir(exist_ok=True)  # type: ignore[attr-defined]
    doc = json.loads(m.to_json())
    for entry, stored, digest in zip(m.partitions, doc["partitions"], digests, strict=True):
        data = zlib.compress(readers.chunk(entry), 3)
        obj = object_key(m.pipeline, m.kind, m.id, entry.index, entry.delta)
        store.put(obj, data)
        stored.update(object=obj, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                      digest=digest)
        del stored["offset"], stored["codec"]
    readers.close()
    for old_pack in {e.object for e in m.partitions}:
        store.delete(old_pack)
    doc.pop("signature")
    doc["total_bytes"] = sum(p["size"] for p in doc["partitions"])
    doc["signature"] = _hmac(key, doc)
    store.put(manifest_key(m.pipeline, m.kind, m.id), json.dumps(doc).encode())


def test_old_format_checkpoints_still_restore(tmp_path: Path) -> None:
    """A full + a delta checkpoint in today's main's format restore with the new code,
    and a new (packed) delta chained onto an old-format parent restores too."""
    rd = tmp_path / "rec"
    init_partitions(rd, 3)
    store = open_store(f"file://{tmp_path}/store")
    items = list(ITEMS)
    taken = []
    for more in ([], [("k1", 5), ("k77", 1)], [("k2", None), ("k3", 2)]):
        items += more
        run(counting_flow(items, []), rd)
        taken.append(take_checkpoint(rd, store, pipeline=PIPE, incremental=True, signing_key=KEY))
    full, delta, newest = taken
    assert (delta.parent_id, newest.parent_id) == (full.id, delta.id)
    old = {m.id: _legacy_digests(store, m, tmp_path / f"legacy-{m.id}") for m in (full, delta)}
    _to_old_format(store, full, KEY, old[full.id])
    _to_old_format(store, delta, KEY, old[delta.id])
    assert not [k for k in store.list(f"{PIPE}/checkpoints/{full.id}/") if k.endswith(".sfpk")]

    for target, m in ((("checkpoint", delta.id), delta), ("latest", newest)):
        into = tmp_path / f"restored-{m.id}"
        result = restore(
            into, checkpoint_store=store, savepoint_store=store, pipeline=PIPE,
            partition_count=3, signing_key=KEY, target=target,  # type: ignore[arg-type]
        )
        assert (result.chosen, result.id, result.notes) == ("checkpoint", m.id, [])
        digests = old.get(m.id, [e.digest for e in m.partitions])  # the older kind, or ms1
        assert [digest_matches(p, d) for p, d in zip(partition_files(into), digests,
                                                      strict=True)] == [True] * 3
        if m.id in old:
            assert not any(d.startswith(DIGEST_PREFIX) for d in digests)
            assert [legacy_digest(p) for p in partition_files(into)] == digests
    out: list = []
    run(counting_flow([*items, ("k0", 1)], out), tmp_path / f"restored-{newest.id}")
    expected: list = []
    run(counting_flow([*items, ("k0", 1)], expected), None)
    assert out == [("k0", (final_sums(expected)["k0"], True))]


def _restore_strict(store: ObjectStore, m: Manifest, into: Path) -> None:
    result = restore(into, checkpoint_store=store, savepoint_store=store, pipeline=m.pipeline,
                     partition_count=m.partition_count, target=("checkpoint", m.id),
                     strict=True, signing_key=KEY)
    assert (result.chosen, result.id, result.notes) == ("checkpoint", m.id, [])


def test_a_full_checkpoint_reads_no_row_in_python_before_publishing(
    tmp_path: Path, live: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full checkpoint records FRAME_DIGEST (restore checks the frame's sha256 and content
    checksum): the `ms1:` digest of its copies, what a later live delta updates, is computed
    after publishing, in the background thread, never in the checkpoint's own jobs (the
    per-partition jobs ran it: ~3 us per row in Python, the largest share of a full)."""
    from recovery import checkpoint

    callers: list[str] = []
    real = checkpoint.logical_digest

    def recorded(*args: Any) -> str:
        callers.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(checkpoint, "logical_digest", recorded)
    store = open_store(f"file://{tmp_path}/store")
    m = take_checkpoint(live, store, pipeline=PIPE, signing_key=KEY)
    assert all(c.startswith("checkpoint-digest-") for c in callers)  # none in the jobs
    assert {e.digest for e in m.partitions} == {pack.FRAME_DIGEST}
    cache = checkpoint.default_cache_dir(live)
    checkpoint.await_cache(cache)
    assert callers and all(c.startswith("checkpoint-digest-") for c in callers)
    meta = json.loads((cache / checkpoint.CACHE_META).read_text())
    _restore_strict(store, m, tmp_path / "restored")
    assert [logical_digest(p) for p in partition_files(tmp_path / "restored")] == [
        meta["digests"][str(e.index)] for e in m.partitions]


def test_an_incremental_onto_a_full_without_its_background_digests_compares_copies(
    tmp_path: Path, live: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the cache's digests (the background pass finished) an incremental is a live
    delta; without them (the process ended first) it compares whole copies (`make_delta`):
    both restore, verified against their `ms1:` digests."""
    from recovery import checkpoint

    store = open_store(f"file://{tmp_path}/store")
    cache = checkpoint.default_cache_dir(live)
    full = take_checkpoint(live, store, pipeline=PIPE, signing_key=KEY, incremental=True)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the wrong kind of delta")

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "make_delta", never)
        live_inc = take_checkpoint(live, store, pipeline=PIPE, signing_key=KEY,
                                   incremental=True)
    assert live_inc.parent_id == full.id
    take_checkpoint(live, store, pipeline=PIPE, signing_key=KEY)  # a new full base
    checkpoint.await_cache(cache)
    meta = json.loads((cache / checkpoint.CACHE_META).read_text())
    del meta["digests"]
    (cache / checkpoint.CACHE_META).write_text(json.dumps(meta))
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "live_delta", never)
        copied = take_checkpoint(live, store, pipeline=PIPE, signing_key=KEY, incremental=True)
    assert copied.parent_id == meta["id"]
    for m in (live_inc, copied):
        assert all(e.delta and e.digest.startswith(DIGEST_PREFIX) for e in m.partitions)
        _restore_strict(store, m, tmp_path / f"restored-{m.id}")


def test_a_format_1_full_restores_and_takes_live_deltas(tmp_path: Path, live: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A full checkpoint as format 1 wrote it (an `ms1:` digest per entry, no FRAME_DIGEST)
    restores, and a live delta is chained onto it with the manifest's digests."""
    from recovery import checkpoint

    store = open_store(f"file://{tmp_path}/store")
    cache = checkpoint.default_cache_dir(live)
    full = take_checkpoint(live, store, pipeline=PIPE, signing_key=KEY, incremental=True)
    doc = json.loads(full.to_json())
    for stored, digest in zip(doc["partitions"], uploaded_digests(store, full), strict=True):
        stored["digest"] = digest
    doc.pop("signature")
    doc["format"] = 1
    doc["signature"] = _hmac(KEY, doc)
    store.put(manifest_key(PIPE, "checkpoint", full.id), json.dumps(doc).encode())
    checkpoint.await_cache(cache)
    meta = json.loads((cache / checkpoint.CACHE_META).read_text())
    del meta["digests"]  # the parent's digests come from its manifest, as format 1 had them
    (cache / checkpoint.CACHE_META).write_text(json.dumps(meta))
    _restore_strict(store, full, tmp_path / "restored-full")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("compared whole copies")

    monkeypatch.setattr(checkpoint, "make_delta", never)
    inc = take_checkpoint(live, store, pipeline=PIPE, signing_key=KEY, incremental=True)
    assert inc.parent_id == full.id
    _restore_strict(store, inc, tmp_path / "restored-inc")


def test_an_incremental_that_fails_to_upload_leaves_its_parent_for_the_next(
    tmp_path: Path, live: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached copies are brought forward by a live delta only after its manifest is
    published (in the background): a checkpoint that fails before (the store fails the
    upload) leaves the cache as its parent's, so the next checkpoint is still an
    incremental onto that parent, and it restores."""
    from recovery import checkpoint
    from recovery.store import StoreError

    store = open_store(f"file://{tmp_path}/store")
    full = take_checkpoint(live, store, pipeline=PIPE, signing_key=KEY, incremental=True)
    cache = checkpoint.default_cache_dir(live)
    checkpoint.await_cache(cache)

    def failing(*args: object, **kwargs: object) -> None:
        raise StoreError("the store failed the upload")

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "_put_packs", failing)
        with pytest.raises(StoreError):
            take_checkpoint(live, store, pipeline=PIPE, signing_key=KEY, incremental=True)
    assert json.loads((cache / checkpoint.CACHE_META).read_text())["id"] == full.id
    again = take_checkpoint(live, store, pipeline=PIPE, signing_key=KEY, incremental=True)
    assert again.incremental and again.parent_id == full.id
    checkpoint.await_cache(cache)
    assert json.loads((cache / checkpoint.CACHE_META).read_text())["id"] == again.id
    _restore_strict(store, again, tmp_path / "restored")


def test_while_the_cache_is_brought_forward_compaction_keeps_the_new_epochs_null_rows(
    tmp_path: Path, live: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between an incremental's publication and the end of its background advance of the
    cache, the cache meta names the new epoch (marked as advancing): `recovery.compact`,
    which may run then (the recovery directory's lock is free), keeps the NULL rows at or
    above it that the next live delta reads; and a process that ends in that window leaves
    a meta no checkpoint takes as a parent (the next one is full, and restores)."""
    from recovery import checkpoint, compact

    store = open_store(f"file://{tmp_path}/store")
    cache = checkpoint.default_cache_dir(live)
    take_checkpoint(live, store, pipeline=PIPE, signing_key=KEY, incremental=True)
    checkpoint.await_cache(cache)
    started, release = threading.Event(), threading.Event()
    real_advance = checkpoint.advance_copy

    def held(*args: Any) -> None:
        started.set()
        release.wait(30)
        real_advance(*args)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "advance_copy", held)
        inc = take_checkpoint(live, store, pipeline=PIPE, signing_key=KEY, incremental=True)
        assert started.wait(30)
        assert compact._parent_epoch(live) == inc.epoch
        assert checkpoint._load_parent(cache, store, PIPE, 3) is None  # as if the process ended
        release.set()
        checkpoint.await_cache(cache)
    meta = json.loads((cache / checkpoint.CACHE_META).read_text())
    assert (meta["id"], meta["epoch"], "advancing" in meta) == (inc.id, inc.epoch, False)
    meta["advancing"] = True  # the process ended before the advance was done
    (cache / checkpoint.CACHE_META).write_text(json.dumps(meta))
    again = take_checkpoint(live, store, pipeline=PIPE, signing_key=KEY, incremental=True)
    assert not again.incremental
    _restore_strict(store, again, tmp_path / "restored")
