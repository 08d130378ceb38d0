"""Coordinated checkpoints of a cluster (recovery.cluster_checkpoint), without Bytewax running.

N fake "processes" are N recovery directories, each holding the share `placement.owned`
gives it of real Bytewax partitions (version 1 of tests/supervised_flow.py ran over 4
partitions: the `ws` fixture). The coordinator and the others talk only through a
file:// store, as pods do through S3.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from recovery.checkpoint import CheckpointTimeout, list_checkpoints, take_checkpoint
from recovery.cluster_checkpoint import (
    PeerFailed,
    answer,
    follow,
    local_answers,
    pending_request,
    restore_process,
    take_cluster_snapshot,
)
from recovery.manifest import Manifest, manifest_key, snapshot_ids
from recovery.partitions import logical_digest, part_index, partition_files
from recovery.placement import owned
from recovery.store import ObjectStore, open_store
from tests.supervisor_harness import Workspace, wait_for
from tests.test_recovery_support import live_resume_epoch, uploaded_digests

PARTS = 4


def split(recovery: Path, root: Path, processes: int) -> list[Path]:
    """Copy `recovery`'s partitions into one directory per process, each its owned share."""
    dirs = []
    for k in range(processes):
        d = root / f"proc-{k}"
        d.mkdir(parents=True)
        for i in owned(k, processes, PARTS):
            shutil.copy(recovery / f"part-{i}.sqlite3", d / f"part-{i}.sqlite3")
        dirs.append(d)
    return dirs


def snapshot(dirs: list[Path], store: ObjectStore, **kw: Any) -> Manifest:
    return take_cluster_snapshot(dirs[0], store, pipeline="sup", processes=len(dirs),
                                 partition_count=PARTS, answer_others=local_answers(dirs, store),
                                 **kw)


def test_two_processes_checkpoint_equals_the_one_process_checkpoint(ws: Workspace, tmp_path: Path) -> None:
    """The cluster's epoch is computed over every process's progress rows (some process alone
    cannot tell it), and every partition is sealed at it exactly as a one-process checkpoint of
    the same partitions seals it: same epoch, same logical digests, manifest last."""
    store = open_store(str(tmp_path / "store"))
    single = take_checkpoint(ws.recovery, open_store(str(tmp_path / "single")), pipeline="sup")
    dirs = split(ws.recovery, tmp_path / "cluster", 2)
    # the execution's rows hash to some partitions only: a process alone would seal elsewhere
    assert any(live_resume_epoch(d) != single.epoch for d in dirs)
    m = snapshot(dirs, store)
    assert m.epoch == single.epoch
    assert [(e.index, e.digest, e.keys) for e in m.partitions] == [
        (e.index, d, e.keys) for e, d in zip(
            single.partitions, uploaded_digests(open_store(str(tmp_path / "single")), single),
            strict=True)]
    assert {e.object.split("/")[3] for e in m.partitions} == {"proc-0", "proc-1"}
    assert m.source_positions == single.source_positions
    assert [c.id for c in list_checkpoints(store, "sup")] == [m.id]


def test_a_process_that_does_not_answer_fails_the_checkpoint_and_publishes_nothing(
    ws: Workspace, tmp_path: Path
) -> None:
    store = open_store(str(tmp_path / "store"))
    dirs = split(ws.recovery, tmp_path / "cluster", 3)
    # process 1 answers (in a thread); on a loaded machine it may not within the timeout
    # either, and is then named too: never process 0, always process 2. Process 1 waits for
    # the same fronts until the same deadline: when it gives up first, process 0 sees its
    # error report and fails with it (PeerFailed, naming process 2 the same way)
    with pytest.raises((CheckpointTimeout, PeerFailed),
                       match=r"process\(es\) \[(1, )?2\] \(down or slow\)"):
        take_cluster_snapshot(dirs[0], store, pipeline="sup", processes=3, partition_count=PARTS,
                              timeout_s=3.0, answer_others=local_answers(dirs[:2], store))
    req = pending_request(store, "sup")
    assert req is not None and not store.exists(manifest_key("sup", "checkpoint", req.id))
    assert list_checkpoints(store, "sup") == []


def test_a_failed_cluster_savepoint_leaves_nothing_to_list_or_restore(ws: Workspace, tmp_path: Path) -> None:
    """Process 1 is down: the coordinator's own share (its objects, front-0 and part-0) is
    removed when the savepoint fails, and a process that answers after the coordinator gave
    up removes what it wrote: `savepoint list` has no "incomplete" note, restore sees nothing
    (was: the share of process 0 stayed, listed as an incomplete savepoint)."""
    store = open_store(str(tmp_path / "store"))
    dirs = split(ws.recovery, tmp_path / "cluster", 2)
    with pytest.raises(CheckpointTimeout, match=r"process\(es\) \[1\]"):
        take_cluster_snapshot(dirs[0], store, pipeline="sup", processes=2, partition_count=PARTS,
                              kind="savepoint", name="sp", timeout_s=1.5)
    assert store.list("sup/savepoints/") == []
    assert snapshot_ids(store, "sup", "savepoint") == ([], [])
    req = pending_request(store, "sup")
    assert req is not None and req.kind == "savepoint"
    with pytest.raises(CheckpointTimeout):  # the late process: process 0's front is gone
        answer(dirs[1], store, req, 1)
    assert store.list("sup/savepoints/") == []
    restored = restore_process(tmp_path / "new", process_id=0, processes=1, checkpoint_store=store,
                               savepoint_store=store, pipeline="sup", partition_count=PARTS)
    assert restored.chosen == "fresh"


def test_a_process_holding_the_wrong_partitions_fails_it_at_once(ws: Workspace, tmp_path: Path) -> None:
    """Its own error is published for the others (no waiting for the timeout)."""
    store = open_store(str(tmp_path / "store"))
    dirs = split(ws.recovery, tmp_path / "cluster", 2)
    shutil.copy(ws.recovery / "part-0.sqlite3", dirs[1] / "part-0.sqlite3")  # owned by process 0
    with pytest.raises(PeerFailed, match=r"process 1 of 2: .* holds partitions \[0, 1, 3\] but owns \[1, 3\]"):
        snapshot(dirs, store, timeout_s=600.0)
    assert list_checkpoints(store, "sup") == []


def test_a_pod_follows_the_request_key(ws: Workspace, tmp_path: Path) -> None:
    """Process 1 as a pod's supervisor runs it: `follow` answers the coordinator's request."""
    store = open_store(str(tmp_path / "store"))
    dirs = split(ws.recovery, tmp_path / "cluster", 2)
    stop, log = threading.Event(), []
    t = threading.Thread(target=follow, args=(dirs[1], store, "sup", 1, 2, stop),
                         kwargs={"log": log.append, "poll_s": 0.05})
    t.start()
    try:
        m = take_cluster_snapshot(dirs[0], store, pipeline="sup", processes=2,
                                  partition_count=PARTS, kind="savepoint", name="sp1")
        wait_for(lambda: log, what="the follower's log line")
    finally:
        stop.set()
        t.join()
    assert m.kind == "savepoint" and len(m.partitions) == PARTS
    assert log == [f"savepoint {m.id}: process 1's share uploaded (epoch {m.epoch})"]


@pytest.mark.parametrize("processes", [1, 3])
def test_restore_onto_another_process_count(ws: Workspace, tmp_path: Path, processes: int) -> None:
    """A 2-process savepoint restored onto 1 or 3 processes: each directory holds exactly the
    partitions it owns, each verified against the manifest's digest."""
    store = open_store(str(tmp_path / "store"))
    m = snapshot(split(ws.recovery, tmp_path / "cluster", 2), store, kind="savepoint")
    digests = {e.index: e.digest for e in m.partitions}
    for k in range(processes):
        d = tmp_path / f"new-{k}"
        result = restore_process(d, process_id=k, processes=processes, checkpoint_store=store,
                                 savepoint_store=store, pipeline="sup", partition_count=PARTS)
        assert result.chosen == "savepoint" and result.id == m.id
        files = partition_files(d)
        assert [part_index(f) for f in files] == owned(k, processes, PARTS)
        assert all(logical_digest(f) == digests[part_index(f)] for f in files)


def test_fresh_process_directory_holds_only_its_partitions(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    d = tmp_path / "proc-1"
    result = restore_process(d, process_id=1, processes=3, checkpoint_store=store,
                             savepoint_store=store, pipeline="sup", partition_count=PARTS)
    assert result.chosen == "fresh"
    assert [part_index(f) for f in partition_files(d)] == [1]


def test_file_store_list_survives_a_directory_deleted_while_it_walks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The processes of a cluster list one file:// store while others delete from it
    (a lease released, retention): FileStore.delete removes emptied directories, so a
    directory can vanish between being seen and being opened. Found by a pod follower
    whose thread died with FileNotFoundError from `store.list` ('.../sup/leases')."""
    store = open_store(str(tmp_path / "store"))
    store.put("sup/checkpoints/c1/cluster/front-0.json", b"{}")
    store.put("sup/leases/checkpoint.json", b"{}")
    gone = tmp_path / "store" / "sup" / "leases"
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:  # the directory was deleted right before it is opened
        if Path(path) == gone:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert store.list("sup/") == ["sup/checkpoints/c1/cluster/front-0.json"]
    assert store.list("sup/checkpoints/c1/cluster/error-") == []
