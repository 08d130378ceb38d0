"""One checkpoint at a time per pipeline, and deltas only onto intact parents (issue 9 item 9).

Against moto's S3 server over real HTTP. `take_checkpoint` runs in threads of this
process (only Python's sqlite3 touches the partitions here: the flows that wrote them
ran before, as in tests/test_recovery_checkpoint.py) and, for the CLI path, as two
concurrent `streamforge checkpoint create` processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from recovery.checkpoint import CheckpointError, apply_retention, list_checkpoints, take_checkpoint
from recovery.lease import Lease, lease_key
from recovery.manifest import snapshot_prefix
from recovery.partitions import init_partitions, logical_digest, partition_files
from recovery.restore import restore
from recovery.store import ObjectStore, open_store
from tests.fixtures.s3 import S3Target
from tests.test_recovery_support import counting_flow, run, uploaded_digests

PIPE = "orders"
REPO = Path(__file__).resolve().parents[1]


def _partitions(tmp_path: Path, n: int = 300, keys: int = 30) -> Path:
    rd = tmp_path / "rec"
    init_partitions(rd, 3)
    run(counting_flow([(f"k{i % keys}", 1) for i in range(n)], []), rd)
    return rd


def _assert_every_published_checkpoint_restores(
    tmp_path: Path, store: ObjectStore, pipeline: str = PIPE, partitions: int = 3,
) -> None:
    published = list_checkpoints(store, pipeline)
    assert published
    for m in published:
        rd = tmp_path / f"restored-{m.id}"
        result = restore(rd, checkpoint_store=store, savepoint_store=store, pipeline=pipeline,
                         partition_count=partitions, target=("checkpoint", m.id), strict=True)
        assert (result.chosen, result.id) == ("checkpoint", m.id), result.notes
        assert [logical_digest(p) for p in partition_files(rd)] == uploaded_digests(store, m)


class _PausingStore:
    """The real store, but the first object upload waits for `resume` (at most 5 s):
    a checkpoint held in flight while another one runs."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.uploading, self.resume = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)
        if "/checkpoints/" in key and not self.uploading.is_set():
            self.uploading.set()
            self.resume.wait(5)


def test_concurrent_checkpoints_every_published_manifest_restores(
    tmp_path: Path, s3_bucket: S3Target,
) -> None:
    """A is held mid-upload while B (another `checkpoint create`) runs with retention 1.
    Before: B published, its retention deleted A's in-flight objects, A published anyway
    and its manifest could not be restored. Now B waits for A's lock; both restore."""
    rd = _partitions(tmp_path)
    store = open_store(s3_bucket.url, endpoint_url=s3_bucket.endpoint_url)
    paused = _PausingStore(store)
    errors: list[BaseException] = []

    def take(st: Any, done: threading.Event | None = None) -> None:
        try:
            take_checkpoint(rd, st, pipeline=PIPE, incremental=True, timeout_s=60)
            apply_retention(st, PIPE, 1)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            if done is not None:
                done.set()

    a = threading.Thread(target=take, args=(paused,))
    a.start()
    assert paused.uploading.wait(30), "A never uploaded"
    b = threading.Thread(target=take, args=(store, paused.resume))
    b.start()
    a.join(90)
    b.join(90)
    assert not a.is_alive() and not b.is_alive()
    assert not errors, errors
    _assert_every_published_checkpoint_restores(tmp_path, store)


def test_a_deleted_parent_object_makes_the_next_checkpoint_full(
    tmp_path: Path, s3_bucket: S3Target,
) -> None:
    """The cached parent's manifest still exists but one of its objects was deleted (another
    writer's retention, an operator): the next checkpoint is full, not a delta onto it."""
    rd = _partitions(tmp_path)
    store = open_store(s3_bucket.url, endpoint_url=s3_bucket.endpoint_url)
    first = take_checkpoint(rd, store, pipeline=PIPE, incremental=True)
    store.delete(first.partitions[1].object)
    second = take_checkpoint(rd, store, pipeline=PIPE, incremental=True)
    assert not second.incremental and second.parent_id is None
    rd2 = tmp_path / "restored"
    result = restore(rd2, checkpoint_store=store, savepoint_store=store, pipeline=PIPE,
                     partition_count=3, target=("checkpoint", second.id), strict=True)
    assert result.chosen == "checkpoint"


def _foreign_lease(store: ObjectStore, *, expires_in: float, snapshot_id: str | None = None) -> None:
    lease = Lease(owner="other-host:4242:cafe", expires_at=time.time() + expires_in, snapshot_id=snapshot_id)
    store.put(lease_key(PIPE), json.dumps(lease.__dict__).encode())


def test_a_live_lease_of_another_host_blocks_publishing(tmp_path: Path, s3_bucket: S3Target) -> None:
    """A CLI elsewhere holds the store lease (the file lock cannot see it): the checkpoint
    waits at most its timeout, fails, and publishes nothing; an expired lease is taken over."""
    rd = _partitions(tmp_path)
    store = open_store(s3_bucket.url, endpoint_url=s3_bucket.endpoint_url)
    _foreign_lease(store, expires_in=600)
    try:
        take_checkpoint(rd, store, pipeline=PIPE, timeout_s=1)
    except CheckpointError as exc:
        assert "other-host:4242:cafe" in str(exc)
    else:
        raise AssertionError("published while another host held the lease")
    assert list_checkpoints(store, PIPE) == []
    _foreign_lease(store, expires_in=-1)
    m = take_checkpoint(rd, store, pipeline=PIPE, timeout_s=30)
    assert [c.id for c in list_checkpoints(store, PIPE)] == [m.id]
    assert not store.exists(lease_key(PIPE)), "the lease is released after publishing"


def test_retention_keeps_the_in_flight_checkpoint_of_a_live_lease(
    tmp_path: Path, s3_bucket: S3Target,
) -> None:
    """Objects of a checkpoint being uploaded elsewhere (named in a live lease, no manifest
    yet, older than the newest complete one) survive retention; once the lease is gone they
    are an interrupted upload and are removed."""
    rd = _partitions(tmp_path)
    store = open_store(s3_bucket.url, endpoint_url=s3_bucket.endpoint_url)
    in_flight = "ckpt-20000101T000000.000000Z-000000"
    store.put(snapshot_prefix(PIPE, "checkpoint", in_flight) + "part-0.sqlite3.z", b"uploading")
    take_checkpoint(rd, store, pipeline=PIPE)
    _foreign_lease(store, expires_in=600, snapshot_id=in_flight)
    assert apply_retention(store, PIPE, 1) == []
    store.delete(lease_key(PIPE))
    assert apply_retention(store, PIPE, 1) == [in_flight]


def test_two_cli_checkpoint_creates_at_once(tmp_path: Path, s3_bucket: S3Target) -> None:
    """Two `streamforge checkpoint create` processes on the same job, two rounds, retention 1:
    both exit 0 each round (the second waits for the first's lock), and every published
    checkpoint restores."""
    rd = _partitions(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "pipeline": {"name": PIPE},
        "recovery": {"dir": str(rd), "partitions": 3},
        "checkpoints": {"dir": s3_bucket.url, "endpoint-url": s3_bucket.endpoint_url,
                        "retained": 1, "timeout": "60s"},
    }))
    cmd = [sys.executable, "-m", "streamforge_ops", "checkpoint", "create", "--config", str(cfg)]
    for _ in range(2):
        procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
    store = open_store(s3_bucket.url, endpoint_url=s3_bucket.endpoint_url)
    _assert_every_published_checkpoint_restores(tmp_path, store)


def test_a_lease_left_by_a_killed_supervisor_is_taken_over_at_once(
    tmp_path: Path, s3_bucket: S3Target,
) -> None:
    """kill -9 during a checkpoint leaves its lease in the store. On the same host it is taken
    over at once when its pid is gone, or when it carries our own pid (a restarted pod keeps
    its hostname and its pid in its pid namespace): the next checkpoint does not wait for expiry."""
    import os
    import socket

    rd = _partitions(tmp_path)
    store = open_store(s3_bucket.url, endpoint_url=s3_bucket.endpoint_url)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for owner in (f"{socket.gethostname()}:{dead.pid}:0001", f"{socket.gethostname()}:{os.getpid()}:0002"):
        lease = Lease(owner=owner, expires_at=time.time() + 600, snapshot_id="ckpt-x")
        store.put(lease_key(PIPE), json.dumps(lease.__dict__).encode())
        take_checkpoint(rd, store, pipeline=PIPE, timeout_s=2)  # CheckpointError if it waited


def test_cli_checkpoint_create_while_the_supervisor_checkpoints(tmp_path: Path, s3_bucket: S3Target) -> None:
    """The supervisor checkpoints every 0.2 s (retained 1) while `streamforge checkpoint create`
    runs twice against the same job and store: each CLI run exits 0 (it waits for the
    supervisor's lock, or the supervisor's next checkpoint waits for it), and after the stop
    every published checkpoint restores."""
    from tests.supervisor_harness import Workspace, wait_for

    (tmp_path / "job").mkdir()
    ws = Workspace(tmp_path / "job", n=2000)
    store_cfg = {"dir": s3_bucket.url, "endpoint-url": s3_bucket.endpoint_url}
    cfg = ws.config(source={"tail": True, "delay": 0.05},
                    checkpoints={**store_cfg, "interval": "0.2s", "retained": 1},
                    savepoints={"dir": f"file://{tmp_path / 'sp'}", "on-cancel": False})
    proc = ws.start(config=cfg)
    ws.running(proc)
    wait_for(lambda: ws.status().get("checkpoints", 0) >= 1, what="a supervisor checkpoint")
    cmd = [sys.executable, "-m", "streamforge_ops", "checkpoint", "create", "--config", str(cfg)]
    for _ in range(2):
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode()
    code, _, err = ws.stop(proc)
    assert code == 0, err
    store = open_store(s3_bucket.url, endpoint_url=s3_bucket.endpoint_url)
    _assert_every_published_checkpoint_restores(tmp_path, store, pipeline="sup", partitions=4)
