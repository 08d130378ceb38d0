"""Incremental checkpoints of a running flow read only what changed (issue 12).

`recovery.delta.live_delta` reads the rows Bytewax wrote since the parent's
epoch and updates the parent's digest; these tests check it against the
slow, whole-state way (a sealed copy and its digest from scratch), through
a restore and a resume, and that compaction keeps what it needs.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recovery import checkpoint
from recovery.checkpoint import CACHE_META, default_cache_dir, take_checkpoint
from recovery.compact import compact
from recovery.partitions import (
    copy_sealed,
    digest_matches,
    has_epoch_index,
    init_partitions,
    logical_digest,
    partition_files,
)
from recovery.restore import restore
from recovery.store import open_store
from tests.test_recovery_support import (
    counting_flow,
    final_sums,
    live_resume_epoch,
    run,
    segments,
)

PIPE = "orders"
# A flow that stays up between segments: after segment i it prints GATE i and pauses
# (TestingSource.PAUSE, epochs keep closing) until the file go-i exists in the gate dir.
_GATED = """
import json, sys, time
from datetime import timedelta
from pathlib import Path
from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSource, run_main
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from tests.test_recovery_support import _add, segments

rd, gate, specs = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])

def items():
    for i, spec in enumerate(specs):
        if i:
            print(f"GATE {i}", flush=True)
            while not (gate / f"go-{i}").exists():
                yield TestingSource.PAUSE(timedelta(seconds=0.05))
        yield from segments(spec)

flow = Dataflow("count")
sums = op.stateful_map("sum", op.input("inp", flow, TestingSource(items(), batch_size=50)), _add)
op.inspect("out", sums, lambda *_: None)
run_main(flow, epoch_interval=timedelta(seconds=0.1),
         recovery_config=RecoveryConfig(str(rd), backup_interval=timedelta(seconds=3600)))
"""


class Gated:
    """The gated flow in another process (a flow and take_checkpoint must not share one)."""

    def __init__(self, rd: Path, gate: Path, specs: list) -> None:
        gate.mkdir()
        self.gate = gate
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _GATED, str(rd), str(gate), json.dumps(specs)],
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.rd = rd

    def wait_gate(self, n: int) -> None:
        """Until the flow printed GATE n and two more epochs are durable."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith(f"GATE {n}"), f"the flow ended before gate {n}: {line!r}"
        start = live_resume_epoch(self.rd) or 0
        deadline = time.monotonic() + 120
        while (live_resume_epoch(self.rd) or 0) < start + 2:
            assert time.monotonic() < deadline, "no epoch became durable within 120 s"
            time.sleep(0.05)

    def open(self, n: int) -> None:
        (self.gate / f"go-{n}").touch()

    def finish(self) -> None:
        self.proc.wait(timeout=120)
        assert self.proc.returncode == 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


BUILD = [["k", 600, 200, 1]]
# k0..k9 change, k0 (just changed), k10 and k11 are discarded, new0 and new1 are new
CHANGE = [["k", 10, 10, 5], ["k", 1, 1, None], ["k1", 2, 2, None], ["new", 2, 2, 1]]


def test_incremental_of_a_running_flow_reads_only_the_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rd = tmp_path / "rec"
    init_partitions(rd, 3)
    store = open_store(f"file://{tmp_path}/store")
    flow = Gated(rd, tmp_path / "gate", [BUILD, CHANGE, []])
    try:
        flow.wait_gate(1)
        full = take_checkpoint(rd, store, pipeline=PIPE, incremental=True)
        flow.open(1)
        flow.wait_gate(2)

        def whole_state_delta(*args: object, **kw: object) -> None:
            raise AssertionError("an incremental of a running flow compared whole copies")

        monkeypatch.setattr(checkpoint, "make_delta", whole_state_delta)
        # the cached copies are brought forward from the deltas in memory, never by
        # opening delta files (apply_delta), and only once the manifest is published
        def delta_file(*args: object, **kw: object) -> None:
            raise AssertionError("the cache was brought forward from delta files")

        monkeypatch.setattr(checkpoint, "apply_delta", delta_file, raising=False)
        cache = default_cache_dir(rd) / "current"
        checkpoint.await_cache(cache.parent)
        parent_digests = [logical_digest(f) for f in partition_files(cache)]
        at_publish: list[list[str]] = []
        real_put = store.put

        def put(key: str, data: bytes) -> None:
            if key.endswith("manifest.json"):
                at_publish.append([logical_digest(f) for f in partition_files(cache)])
            real_put(key, data)

        monkeypatch.setattr(store, "put", put)
        inc = take_checkpoint(rd, store, pipeline=PIPE, incremental=True)
        checkpoint.await_cache(cache.parent)
        monkeypatch.undo()
        assert at_publish == [parent_digests]  # the parent's copies, untouched until then
        # The updated digests and key counts are those of the whole state sealed at
        # inc's epoch, computed from scratch; the cache holds that state too.
        for f, entry in zip(partition_files(rd), inc.partitions, strict=True):
            sealed = tmp_path / f"sealed-{f.name}"
            info = copy_sealed(f, sealed, inc.epoch)
            assert (entry.digest, entry.keys) == (logical_digest(sealed), info.keys)
            assert logical_digest(cache / f.name) == entry.digest
        flow.open(2)
        flow.finish()
    finally:
        flow.kill()
    assert inc.incremental and inc.parent_id == full.id
    assert sum(e.keys for e in inc.partitions) == 200 - 3 + 2 + 1  # + the input partition
    assert inc.total_bytes < full.total_bytes / 2
    assert inc.source_positions == {"count.inp": {"iterable": 600 + 15}}
    assert set(inc.state_bytes_by_step) == set(full.state_bytes_by_step)

    rd2 = tmp_path / "restored"
    result = restore(rd2, checkpoint_store=store, savepoint_store=store, pipeline=PIPE,
                     partition_count=3)
    assert (result.chosen, result.id, result.notes) == ("checkpoint", inc.id, [])
    assert all(digest_matches(p, e.digest) for p, e in
               zip(partition_files(rd2), inc.partitions, strict=True))
    for p in [*partition_files(rd), *partition_files(rd2)]:  # created with it, restored with it
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            assert has_epoch_index(conn)
        finally:
            conn.close()
    items = segments(BUILD + CHANGE)
    tail = items + segments([["k", 20, 20, 1], ["new", 2, 2, 1]])
    out: list = []
    run(counting_flow(tail, out), rd2)
    reference: list = []
    run(counting_flow(tail, reference), None)
    resumed = final_sums(out)
    assert resumed == {k: v for k, v in final_sums(reference).items() if k in resumed}
    # k0 (changed, then discarded) and k10 (discarded) start again from 0
    assert (resumed["k0"], resumed["k10"], resumed["k1"], resumed["k12"]) == (1, 1, 3 + 5 + 1, 3 + 1)
    assert resumed["new0"] == 2


def _null_rows(rd: Path) -> list[int]:
    epochs = []
    for f in partition_files(rd):
        conn = sqlite3.connect(f"file:{f}?mode=ro", uri=True)
        try:
            epochs += [e for (e,) in conn.execute(
                "SELECT snap_epoch FROM snaps WHERE ser_change IS NULL")]
        finally:
            conn.close()
    return sorted(epochs)


def test_compaction_keeps_null_rows_a_delta_still_needs(tmp_path: Path) -> None:
    """A discarded key's NULL row at or above the cached parent's epoch is how the next
    incremental learns of the discard: compaction keeps it (older NULL rows go)."""
    rd = tmp_path / "rec"
    init_partitions(rd, 2)
    spec = [["a", 20, 20, 1], ["a", 20, 20, None], ["b", 20, 20, 1], ["b", 20, 20, None],
            ["live", 5, 5, 1]]
    run(counting_flow(segments(spec), []), rd, backup_s=0)
    nulls = _null_rows(rd)
    assert len(nulls) == 40 and nulls[0] < nulls[-1]
    floor = nulls[-1]  # the "b" discards are at or above the parent's epoch
    cache = default_cache_dir(rd)
    cache.mkdir()
    (cache / CACHE_META).write_text(json.dumps({"id": "x", "epoch": floor}))
    compact(rd)
    assert _null_rows(rd) == [e for e in nulls if e >= floor] and len(_null_rows(rd)) >= 1
    (cache / CACHE_META).unlink()  # no parent: nothing to keep
    compact(rd)
    assert _null_rows(rd) == []


def private_imports(source: str) -> list[str]:
    """Names starting with ``_`` that `source` imports from a ``recovery.*`` module."""
    import ast

    return [
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recovery")
        for alias in node.names
        if alias.name.startswith("_")
    ]


def test_recovery_modules_import_no_private_helpers() -> None:
    """recovery/cluster_checkpoint.py imported `_Deadline` and `_upload` from
    recovery.checkpoint: helpers another module needs are public there (one name each)."""
    root = Path(__file__).resolve().parents[1] / "recovery"
    found = {p.name: private_imports(p.read_text()) for p in sorted(root.glob("*.py"))}
    assert {name: names for name, names in found.items() if names} == {}
