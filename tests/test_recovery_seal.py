"""Sealing a checkpoint copy: a copy whose commit epoch reached the consistent epoch is refused.

Bytewax's GC at commit epoch C keeps, per key, only the newest snapshot at or
below C (DESIGN.md §10). A copy whose commit epoch reached the consistent
epoch R has lost the rows older than R of every key re-snapshotted at R;
sealing it at R (dropping rows >= R) would delete those keys and the source
position, and the digest, computed after sealing, would still verify.

The partitions here are real Bytewax 0.21.1 partitions run with
``backup_interval=0`` (GC at every commit). A resumed run re-snapshots every
loaded key at its first epoch, so a run that resumes at R and ends one epoch
later leaves commit epoch == R with every row at R.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from recovery import checkpoint
from recovery.checkpoint import CheckpointError, list_checkpoints, take_checkpoint
from recovery.partitions import (
    PartitionError,
    connect,
    copy_partition,
    init_partitions,
    partition_files,
    seal_copy,
)
from recovery.restore import restore
from recovery.store import open_store
from tests.test_recovery_support import counting_flow, live_resume_epoch, run

PIPE = "orders"
ITEMS = [(f"k{i % 5}", 1) for i in range(200)]


@pytest.fixture
def flow_dir(tmp_path: Path) -> Path:
    rd = tmp_path / "rec"
    init_partitions(rd, 2)
    run(counting_flow(ITEMS, []), rd, backup_s=0)
    return rd


def test_copy_with_commit_epoch_at_r_is_refused(tmp_path: Path, flow_dir: Path) -> None:
    """R read before the copy; the flow runs one more epoch: commit == R in the copy.

    The old `seal_copy` (refusing only commit > R) sealed it with 0 keys left.
    """
    r = live_resume_epoch(flow_dir)
    run(counting_flow(ITEMS, []), flow_dir, backup_s=0)  # resumes at R, commits epoch R
    for part in partition_files(flow_dir):
        copy = tmp_path / part.name
        copy_partition(part, copy)
        conn = connect(copy, readonly=True)
        commit = conn.execute("SELECT commit_epoch FROM commits").fetchone()[0]
        live_rows = conn.execute("SELECT COUNT(*) FROM snaps").fetchone()[0]
        older = conn.execute("SELECT COUNT(*) FROM snaps WHERE snap_epoch < ?", (r,)).fetchone()[0]
        conn.close()
        assert (commit, older) == (r, 0) and live_rows > 0  # GC removed every row below R
        with pytest.raises(PartitionError, match=f"committed epoch {r} .*consistent epoch {r}"):
            seal_copy(copy, r)


def test_copy_below_r_still_seals(tmp_path: Path, flow_dir: Path) -> None:
    r = live_resume_epoch(flow_dir)
    copy = tmp_path / "part-0.sqlite3"
    copy_partition(partition_files(flow_dir)[0], copy)
    info = seal_copy(copy, r)
    assert info.commit_epoch is not None and info.commit_epoch < r and info.keys > 0


def test_checkpoint_racing_one_epoch_fails_cleanly_and_the_retry_is_whole(
    tmp_path: Path, flow_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow commits epoch R between reading R and copying: nothing is published.

    On the old code this checkpoint published, verified and restored an empty
    state (no keys, no source position). The next attempt (the supervisor's
    next interval) publishes a checkpoint that restores every key.
    """
    store = open_store(f"file://{tmp_path}/store")
    real_copy = checkpoint.copy_sealed
    raced: list[bool] = []

    def copy_after_one_more_epoch(src: Path, dst: Path, epoch: int | None) -> object:
        if not raced:
            raced.append(True)
            run(counting_flow(ITEMS, []), flow_dir, backup_s=0)
        return real_copy(src, dst, epoch)

    monkeypatch.setattr(checkpoint, "copy_sealed", copy_after_one_more_epoch)
    with pytest.raises(CheckpointError, match="past the consistent epoch|reached the consistent"):
        take_checkpoint(flow_dir, store, pipeline=PIPE)
    assert raced and list_checkpoints(store, PIPE) == []

    again = take_checkpoint(flow_dir, store, pipeline=PIPE)
    assert sum(p.keys for p in again.partitions) == 6  # 5 keys + the input's position
    result = restore(
        tmp_path / "restored",
        checkpoint_store=store,
        savepoint_store=store,
        pipeline=PIPE,
        partition_count=2,
    )
    assert result.id == again.id
    out: list = []
    run(counting_flow([*ITEMS, ("k0", 1)], out), tmp_path / "restored")
    assert out == [("k0", (41, True))]


def test_refused_copy_is_a_counted_checkpoint_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the supervisor's `snapshots.take`: logged, counted, nothing published."""
    from prometheus_client import REGISTRY

    from streamforge_ops import snapshots
    from streamforge_ops.job import load_job

    rd = tmp_path / "rec"
    init_partitions(rd, 2)
    run(counting_flow(ITEMS, []), rd, backup_s=0)
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"pipeline: {{name: {PIPE}, flow: 'x:y'}}\n"
        f"recovery: {{dir: {rd}, partitions: 2}}\n"
        f"checkpoints: {{dir: 'file://{tmp_path}/store'}}\n"
    )
    job = load_job(str(cfg))
    real_copy = checkpoint.copy_sealed
    raced: list[bool] = []

    def copy_after_one_more_epoch(src: Path, dst: Path, epoch: int | None) -> object:
        if not raced:
            raced.append(True)
            run(counting_flow(ITEMS, []), rd, backup_s=0)
        return real_copy(src, dst, epoch)

    monkeypatch.setattr(checkpoint, "copy_sealed", copy_after_one_more_epoch)
    labels = {"pipeline": PIPE, "kind": "checkpoint"}
    name = "streamforge_checkpoint_failure_count_total"
    before = REGISTRY.get_sample_value(name, labels) or 0.0
    logged: list[str] = []
    out = snapshots.take(job, log=logged.append)
    assert not out.ok and "reached the consistent epoch" in (out.error or "")
    assert REGISTRY.get_sample_value(name, labels) == before + 1
    assert "FAILED" in logged[0] and list_checkpoints(job.checkpoint_store, PIPE) == []
    assert snapshots.take(job, log=logged.append).ok  # the next interval's attempt
