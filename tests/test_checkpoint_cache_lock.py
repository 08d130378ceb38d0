"""The checkpoint cache's own lock: the background digest of a full checkpoint's cached
copies holds it until its meta is written, against every checkpoint of any process.

Before it, the digest thread ran after `take_checkpoint` had released the recovery
directory's lock, and `await_cache` only waited for a thread of the same process: another
process (an operator's `streamforge checkpoint create`, a restarted supervisor) could
take the directory lock and change the cache while the thread still hashed it or was
about to write the old checkpoint's meta back over it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from recovery import checkpoint
from recovery.checkpoint import CACHE_META, CheckpointError, default_cache_dir, take_checkpoint
from recovery.lease import CheckpointBusy
from recovery.partitions import init_partitions, logical_digest, part_index, partition_files
from recovery.store import open_store
from tests.state_fixture import run_version_1
from tests.supervisor_harness import Workspace, cli
from tests.test_recovery_support import counting_flow, run

PIPE = "orders"
REPO = Path(__file__).resolve().parents[1]

# A process taking a full checkpoint whose background digest of the cache blocks (in its
# first `logical_digest`) until the file `release` exists, after creating `held`.
_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from recovery import checkpoint
    from recovery.store import open_store

    rd, store_url, held, release = sys.argv[1:5]
    real = checkpoint.logical_digest

    def held_digest(path, *args, **kwargs):
        Path(held).touch()
        while not Path(release).exists():
            time.sleep(0.01)
        return real(path, *args, **kwargs)

    checkpoint.logical_digest = held_digest
    m = checkpoint.take_checkpoint(Path(rd), open_store(store_url), pipeline="orders",
                                   incremental=True)
    print(m.id, flush=True)
    checkpoint.await_cache(checkpoint.default_cache_dir(Path(rd)))
    """
)


def _partitions(tmp_path: Path) -> Path:
    rd = tmp_path / "rec"
    init_partitions(rd, 3)
    run(counting_flow([(f"k{i % 30}", 1) for i in range(300)], []), rd)
    return rd


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    """Until `path` exists; fails if `proc` ended first (it will never appear)."""
    while not path.exists():
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"the holder process ended (rc {proc.returncode}): {err}")
        time.sleep(0.01)


def _cache_digests_match(rd: Path) -> None:
    """The cache meta's digests are those of the cached copies."""
    cache = default_cache_dir(rd)
    digests = json.loads((cache / CACHE_META).read_text())["digests"]
    assert digests == {str(part_index(f)): logical_digest(f)
                       for f in partition_files(cache / "current")}


def test_another_process_waits_for_the_background_digest_of_the_cache(tmp_path: Path) -> None:
    """Process A's full checkpoint is published and its digest thread is held mid-hash. This
    process's checkpoint of the same recovery directory then times out with CheckpointBusy
    naming the cache lock (before the fix: it took the free directory lock and changed the
    cache under A's thread); once A's digest is done it succeeds, as a delta onto A's."""
    rd = _partitions(tmp_path)
    store_url = f"file://{tmp_path}/store"
    held, release = tmp_path / "held", tmp_path / "release"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(rd), store_url, str(held), str(release)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for(held, holder)
        store = open_store(store_url)
        with pytest.raises(CheckpointError, match="cache.lock"):
            take_checkpoint(rd, store, pipeline=PIPE, incremental=True, timeout_s=1.0)
        assert holder.poll() is None  # A's digest was still held all along
    finally:
        release.touch()
        out, err = holder.communicate(timeout=120)
    assert holder.returncode == 0, err
    full_id = out.split()[0]
    _cache_digests_match(rd)

    m = take_checkpoint(rd, store, pipeline=PIPE, incremental=True, timeout_s=60)
    assert m.parent_id == full_id
    assert all(e.delta for e in m.partitions)


def test_back_to_back_checkpoints_of_one_process_do_not_deadlock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The next checkpoint starts while the full's digest thread still runs (held until that
    checkpoint, holding the directory lock and lease, waits for it in `await_cache`): the
    thread finishes without either lock, the checkpoint then gets the cache lock and deltas
    onto the full with its digests."""
    rd = _partitions(tmp_path)
    store = open_store(f"file://{tmp_path}/store")
    waiting = threading.Event()
    real_digest, real_await = checkpoint.logical_digest, checkpoint.await_cache

    def held_digest(path: Path, *args: object, **kwargs: object) -> str:
        assert waiting.wait(60), "the next checkpoint never waited for the digest"
        return real_digest(path, *args, **kwargs)  # type: ignore[arg-type]

    def awaiting(cache_dir: Path, *args: object, **kwargs: object) -> None:
        waiting.set()
        real_await(cache_dir, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint, "logical_digest", held_digest)
    full = take_checkpoint(rd, store, pipeline=PIPE, incremental=True)  # its digest: held
    monkeypatch.setattr(checkpoint, "await_cache", awaiting)
    m = take_checkpoint(rd, store, pipeline=PIPE, incremental=True, timeout_s=60)
    assert waiting.is_set()
    assert m.parent_id == full.id and all(e.delta for e in m.partitions)
    current = partition_files(default_cache_dir(rd) / "current")
    assert [e.digest for e in m.partitions] == [real_digest(f) for f in current]


def test_the_cache_lock_is_per_open_file_even_in_one_process(tmp_path: Path) -> None:
    """A second acquisition conflicts in the same process (a checkpoint against its own digest
    thread); after `hand_over` only the new holder releases it; released, it is free."""
    from recovery.lease import CacheLock

    cache = tmp_path / "cache"
    first = CacheLock.acquire(cache, 0)
    with pytest.raises(CheckpointBusy, match=r"cache\.lock"):
        CacheLock.acquire(cache, 0)
    handed = first.hand_over()
    first.release()  # no longer the holder: still locked
    with pytest.raises(CheckpointBusy):
        CacheLock.acquire(cache, 0)
    handed.release()
    CacheLock.acquire(cache, 0).release()


def test_checkpoint_create_returns_with_the_cache_ready_for_the_next_incremental(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`streamforge checkpoint create` is a process that ends when it returns: it waits for
    the cache's background work (here a slow advance of the cached copies by its live
    deltas), so the next checkpoint is an incremental onto it."""
    from recovery import checkpoint

    ws = Workspace(tmp_path, n=20)
    cfg = ws.config()
    monkeypatch.setenv("STREAMFORGE_CONFIG", str(cfg))
    run_version_1(cfg, ws.recovery)
    real = checkpoint.advance_copy

    def slow(*args: Any) -> None:
        time.sleep(0.1)
        real(*args)

    monkeypatch.setattr(checkpoint, "advance_copy", slow)
    full = cli(capsys, "checkpoint", "create")
    inc = cli(capsys, "checkpoint", "create")
    meta = json.loads((checkpoint.default_cache_dir(ws.recovery) / checkpoint.CACHE_META).read_text())
    assert (inc["parent_id"], meta["id"], meta.get("advancing")) == (full["id"], inc["id"], None)


def test_a_kill_while_the_cache_is_brought_forward_makes_the_next_checkpoint_full(
    tmp_path: Path,
) -> None:
    """SIGKILL in the middle of bringing the cached copies forward (after the incremental
    was published): the next checkpoint, in a new process, takes no parent from that cache
    and is a full one, and the pipeline restores from it."""
    ws = Workspace(tmp_path, n=20)
    cfg = ws.config()
    run_version_1(cfg, ws.recovery)

    def streamforge(*argv: str, env: dict[str, str] | None = None
                    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streamforge_ops", *argv, "--config", str(cfg), "--json"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})

    def create_or_list(action: str = "create", env: dict[str, str] | None = None
                       ) -> subprocess.CompletedProcess[str]:
        return streamforge("checkpoint", action, env=env)

    def create(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return create_or_list("create", env)

    full = json.loads(create().stdout)
    killed = create({"STREAMFORGE_FAULT_POINT": "checkpoint.cache@2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    listed = json.loads(create_or_list("list").stdout)
    published = [m for m in listed if m["id"] != full["id"]]
    assert [m["parent_id"] for m in published] == [full["id"]]  # published before the kill
    after = json.loads(create().stdout)
    assert after["parent_id"] is None and after["id"] != published[0]["id"]
    restored = streamforge("restore", "--strict")
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["id"] == after["id"]


def test_a_supervisor_exits_with_the_cache_ready_for_the_next_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervisor whose bounded input is done takes its final checkpoint and exits. It
    waits for the cache's background work first (slowed down here: the full's digest, an
    incremental's advance of the copies), so the cache it leaves is a parent the next
    run's checkpoints delta onto, with updatable digests."""
    from recovery.partitions import digest_rows_sum
    from streamforge_ops.cli import main

    ws = Workspace(tmp_path, n=20)
    cfg = ws.config()
    real_digest, real_advance = checkpoint.logical_digest, checkpoint.advance_copy

    def slow_digest(*args: Any, **kwargs: Any) -> str:
        time.sleep(0.1)
        return real_digest(*args, **kwargs)

    def slow_advance(*args: Any) -> None:
        time.sleep(0.1)
        real_advance(*args)

    monkeypatch.setattr(checkpoint, "logical_digest", slow_digest)
    monkeypatch.setattr(checkpoint, "advance_copy", slow_advance)
    assert main(["run", "--config", str(cfg)]) == 0
    store = open_store(ws.store_url)
    parent = checkpoint._load_parent(default_cache_dir(ws.recovery), store, "sup", 4)
    assert parent is not None
    assert all(digest_rows_sum(d) is not None for d in parent.digests.values()), parent.digests
