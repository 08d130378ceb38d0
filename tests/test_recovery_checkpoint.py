"""Checkpoints: full and incremental round trips, online consistency, retention, metrics."""

from __future__ import annotations

import json
from pathlib import Path

from dataflows import metrics
from recovery.checkpoint import (
    CACHE_META,
    CheckpointError,
    apply_retention,
    await_cache,
    default_cache_dir,
    list_checkpoints,
    take_checkpoint,
)
from recovery.manifest import manifest_key
from recovery.pack import FRAME_DIGEST
from recovery.partitions import init_partitions, logical_digest, partition_files
from recovery.restore import restore
from recovery.store import ObjectStore, open_store
from tests.fixtures.s3 import S3Target
from tests.test_recovery_support import (
    counting_flow,
    final_sums,
    run,
    run_in_subprocess,
    segments,
    uploaded_digests,
)

PIPE = "orders"


def _items(n: int, keys: int, value: int | None = 1, prefix: str = "k") -> list:
    return [(f"{prefix}{i % keys}", value) for i in range(n)]


def _restore(rd: Path, store: ObjectStore, count: int = 3, **kw):
    return restore(
        rd,
        checkpoint_store=store,
        savepoint_store=store,
        pipeline=PIPE,
        partition_count=count,
        **kw,
    )


def test_full_round_trip_file_store(tmp_path: Path) -> None:
    rd = tmp_path / "rec"
    init_partitions(rd, 3)
    store = open_store(f"file://{tmp_path}/store")
    items = _items(600, 40)
    out: list = []
    run(counting_flow(items, out), rd)

    m = take_checkpoint(rd, store, pipeline=PIPE, code_version="7")

    assert [c.id for c in list_checkpoints(store, PIPE)] == [m.id]
    assert m.partition_count == 3 and m.code_version == "7" and not m.incremental
    assert sum(p.keys for p in m.partitions) == 40 + 1  # 40 keys + the input partition
    assert m.source_positions == {"count.inp": {"iterable": 600}}
    assert m.state_bytes_by_step["count.sum.stateful_flat_map.stateful.stateful_batch"] > 0
    assert m.total_bytes == sum(p.size for p in m.partitions)

    rd2 = tmp_path / "restored"
    result = _restore(rd2, store)
    assert (result.chosen, result.id, result.notes) == ("checkpoint", m.id, [])
    # a full records FRAME_DIGEST (the bytes are the check); the cache's background digests
    # of the copies it uploaded are what the restored partitions hold
    assert {p.digest for p in m.partitions} == {FRAME_DIGEST}
    cache = default_cache_dir(rd)
    await_cache(cache)
    digests = json.loads((cache / CACHE_META).read_text())["digests"]
    assert [logical_digest(p) for p in partition_files(rd2)] == [
        digests[str(p.index)] for p in m.partitions]
    more = items + _items(100, 50)
    resumed: list = []
    run(counting_flow(more, resumed), rd2)
    reference: list = []
    run(counting_flow(more, reference), None)
    assert final_sums(out + resumed) == final_sums(reference)


def test_incremental_round_trip_s3_with_discards(tmp_path: Path, s3_bucket: S3Target) -> None:
    rd = tmp_path / "rec"
    init_partitions(rd, 3)
    store = open_store(s3_bucket.url, endpoint_url=s3_bucket.endpoint_url)
    items = _items(3000, 1000)
    run(counting_flow(items, []), rd)
    full = take_checkpoint(rd, store, pipeline=PIPE, incremental=True, full_every=3)

    # 1% of the keys change, 5 keys are discarded, 5 are new.
    items += _items(10, 10, 7) + [(f"k{i}", None) for i in range(20, 25)] + _items(5, 5, 1, "new")
    run(counting_flow(items, []), rd)
    inc = take_checkpoint(rd, store, pipeline=PIPE, incremental=True, full_every=3)
    assert inc.incremental and inc.parent_id == full.id and inc.base_id == full.id
    assert inc.total_bytes < full.total_bytes / 2
    assert sum(p.keys for p in inc.partitions) == 1000 - 5 + 5 + 1

    items += _items(3, 3, 2)
    run(counting_flow(items, []), rd)
    inc2 = take_checkpoint(rd, store, pipeline=PIPE, incremental=True, full_every=3)
    assert inc2.chain == [full.id, inc.id]
    items += _items(3, 3, 2)
    run(counting_flow(items, []), rd)
    base2 = take_checkpoint(rd, store, pipeline=PIPE, incremental=True, full_every=3)
    assert not base2.incremental  # full_every=3: a new full base

    for m in (inc2, inc):
        rd2 = tmp_path / f"r-{m.id}"
        result = _restore(rd2, store, target=("checkpoint", m.id))
        assert result.id == m.id
        assert [logical_digest(p) for p in partition_files(rd2)] == uploaded_digests(store, m)
    # The restored incremental state resumes to the same result as no crash at all.
    rd3 = tmp_path / "r3"
    _restore(rd3, store, target=("checkpoint", inc2.id))
    tail = items + _items(50, 50, 3)
    out: list = []
    run(counting_flow(tail, out), rd3)
    reference: list = []
    run(counting_flow(tail, reference), None)
    # Every key touched after the restore (k0..k49, including the discarded
    # k20..k24, which must restart from 0) ends as in the uninterrupted run.
    resumed = final_sums(out)
    assert set(resumed) == {f"k{i}" for i in range(50)}
    assert resumed == {k: v for k, v in final_sums(reference).items() if k in resumed}
    assert resumed["k20"] == 3


def test_online_checkpoints_resume_consistently(tmp_path: Path) -> None:
    """Checkpoints taken while the flow runs (another process) restore and resume exactly."""
    rd = tmp_path / "rec"
    init_partitions(rd, 2)
    store = open_store(f"file://{tmp_path}/store")
    spec = [["k", 15000, 300, 1]]
    taken: list = []
    failed = 0
    proc = run_in_subprocess(rd, spec)
    try:
        while proc.poll() is None:
            try:
                taken.append(
                    take_checkpoint(rd, store, pipeline=PIPE, incremental=True, full_every=4)
                )
            except CheckpointError:  # the flow was starting while copying: nothing published
                failed += 1
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert len(taken) >= 2, f"only {len(taken)} checkpoints ({failed} failed) while the flow ran"
    items = segments(spec)
    reference: list = []
    run(counting_flow(items, reference), None)
    for m in (taken[len(taken) // 2], taken[-1]):
        rd2 = tmp_path / m.id
        result = _restore(rd2, store, count=2, target=("checkpoint", m.id))
        assert result.epoch == m.epoch
        out: list = []
        run(counting_flow(items, out), rd2)
        got = final_sums(out)
        assert got == {k: v for k, v in final_sums(reference).items() if k in got}


def test_retention_keeps_needed_bases_and_removes_incomplete(tmp_path: Path) -> None:
    rd = tmp_path / "rec"
    init_partitions(rd, 2)
    store = open_store(f"file://{tmp_path}/store")
    items: list = []
    ids = []
    for round_ in range(5):
        items += _items(20, 20, round_ + 1)
        run(counting_flow(items, []), rd)
        ids.append(take_checkpoint(rd, store, pipeline=PIPE, incremental=True, full_every=3).id)
    # chains: 0 full, 1 <- 0, 2 <- 0,1 ; 3 full, 4 <- 3
    store.put(f"{PIPE}/checkpoints/ckpt-00000000T000000.000000Z-dead00/part-0.sqlite3.z", b"x")

    deleted = apply_retention(store, PIPE, retained=1)

    assert sorted(deleted) == sorted(
        [ids[0], ids[1], ids[2], "ckpt-00000000T000000.000000Z-dead00"]
    )
    assert [m.id for m in list_checkpoints(store, PIPE)] == [ids[4], ids[3]]
    assert _restore(tmp_path / "r", store, count=2).id == ids[4]
    assert not store.exists(manifest_key(PIPE, "checkpoint", ids[0]))


def test_checkpoint_metrics_recorded(tmp_path: Path) -> None:
    rd = tmp_path / "rec"
    init_partitions(rd, 1)
    run(counting_flow(_items(10, 5), []), rd)
    store = open_store(str(tmp_path / "store"))
    done = metrics.CHECKPOINTS_COMPLETED.labels(pipeline="metrics-p", kind="checkpoint")
    before = done._value.get()
    m = take_checkpoint(rd, store, pipeline="metrics-p")
    assert done._value.get() == before + 1
    assert (
        metrics.CHECKPOINT_SIZE.labels(pipeline="metrics-p", kind="checkpoint")._value.get()
        == m.total_bytes
    )
    assert metrics.LAST_CHECKPOINT_TIMESTAMP.labels(pipeline="metrics-p")._value.get() > 0
