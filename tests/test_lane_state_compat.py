"""State written by the code before the keyed lanes (commit aa3636b) restores into the lanes.

The old code (`git archive aa3636b`) runs the pipeline over the first part of a
fixed input with a recovery directory; `dataflows.flow.legacy.fuse_legacy_steps`
fuses its per-pattern steps' rows into lane rows; the current code resumes
from that directory over the rest. The outputs of both executions together
equal an uninterrupted run of the old code (and of the current code).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir

from dataflows.flow.legacy import LANE_STEP, fuse_legacy_steps
from recovery.steps import snapshot_steps

REPO = Path(__file__).resolve().parents[1]
BASE = "aa3636b"
SCRIPT = REPO / "tests" / "lane_compat_flow.py"
N, CUT = 60, 31

CONFIGS = {
    "orders": "pipeline: {name: orders}\npatterns: {dedup: {ttl: 1h}}\n",
    "sessions": ("pipeline: {name: sessions}\npatterns: {dedup: {ttl: 1h}, sessions: {gap: 5m, "
                 "allowed-lateness: 1m, advance-on-idle: false}}\n"),
}


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The code of commit aa3636b (before the lanes), unpacked."""
    dest = tmp_path_factory.mktemp("aa3636b")
    blob = subprocess.run(["git", "-C", str(REPO), "archive", BASE, "dataflows", "recovery"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run(code: Path, pipeline: str, tmp: Path, upto: int, out: str, recovery: Path | None) -> list[str]:
    config = tmp / f"{pipeline}.yaml"
    config.write_text(CONFIGS[pipeline])
    cmd = [sys.executable, str(SCRIPT), pipeline, "--config", str(config), "--upto", str(upto),
           "--out", str(tmp / out)]
    if recovery is not None:
        cmd += ["--recovery", str(recovery)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (tmp / out).read_text().splitlines()


def by_sink(*outputs: list[str]) -> dict[tuple[str, str], list[str]]:
    """Each (sink, key)'s items in order, over the executions in order (Bytewax orders the
    keys of one activation by its own hashing: only a key's order is defined)."""
    sinks: dict[tuple[str, str], list[str]] = {}
    for lines in outputs:
        for line in lines:
            name, _, item = line.partition(" ")
            key = re.search(r"key='([^']*)'", item)
            sinks.setdefault((name, key[1] if key else ""), []).append(item)
    return {k: v if k[1] else sorted(v) for k, v in sinks.items()}


@pytest.mark.parametrize("pipeline", sorted(CONFIGS))
def test_state_of_the_old_steps_restores_into_the_lane(pipeline: str, old_tree: Path, tmp_path: Path) -> None:
    reference = run(old_tree, pipeline, tmp_path, N, "reference.txt", None)
    rec = tmp_path / "recovery"
    rec.mkdir()
    init_db_dir(rec, 2)
    first = run(old_tree, pipeline, tmp_path, CUT, "first.txt", rec)
    old_steps = set(snapshot_steps(rec))
    assert f"{pipeline}.dedup.stateful_batch" in old_steps
    assert fuse_legacy_steps(rec) > 0
    steps = set(snapshot_steps(rec))
    assert steps == {LANE_STEP.format(flow=pipeline)} | (old_steps - {
        f"{pipeline}.dedup.stateful_batch", f"{pipeline}.materialize.materialize.stateful_batch",
        f"{pipeline}.merge.merge.stateful_batch", f"{pipeline}.sessions.sessions.stateful_batch"})
    second = run(REPO, pipeline, tmp_path, N, "second.txt", rec)
    assert by_sink(first, second) == by_sink(reference)
    assert by_sink(run(REPO, pipeline, tmp_path, N, "current.txt", None)) == by_sink(reference)
    # the cut falls inside live state: the resumed part updates documents / sessions of the first
    kinds = {"orders": "Change(kind='updated'", "sessions": "revision=1"}
    assert any(kinds[pipeline] in line for line in second) or pipeline == "sessions"
    assert any(k[0] == "sink" for k in by_sink(second))


def test_every_restore_fuses_the_old_steps_before_the_step_check(old_tree: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The step check of a restore or local resume (`restore_steps.apply_step_check`) fuses
    state of the pre-lane steps when the flow has the lane step; before, it refused the old
    steps as unclaimed state (or dropped them with --allow-non-restored-state)."""
    from types import SimpleNamespace

    from dataflows.config import Config
    from streamforge_ops import restore_steps

    rec = tmp_path / "recovery"
    rec.mkdir()
    init_db_dir(rec, 2)
    run(old_tree, "orders", tmp_path, CUT, "first.txt", rec)
    old = {"orders.dedup.stateful_batch", "orders.materialize.materialize.stateful_batch",
           "orders.merge.merge.stateful_batch"}
    lane = LANE_STEP.format(flow="orders")
    new_flow = {lane} | (set(snapshot_steps(rec)) - old)
    monkeypatch.setattr(restore_steps, "stateful_steps", lambda *a: new_flow)
    job = SimpleNamespace(cfg=Config({}, "test"), config_path=tmp_path / "orders.yaml",
                          settings=SimpleNamespace(flow="dataflows.pipelines.orders:flow",
                                                   savepoints=SimpleNamespace(allow_non_restored_state=False)))
    check = restore_steps.apply_step_check(job, rec, "checkpoint test")  # type: ignore[arg-type]
    assert not check.unclaimed
    assert set(snapshot_steps(rec)) == new_flow
