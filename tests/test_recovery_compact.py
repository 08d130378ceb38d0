"""Compaction keeps snaps bounded under key churn; inspect_partitions reports it."""

from __future__ import annotations

import json
from pathlib import Path

from recovery.compact import compact
from recovery.inspect import inspect_partitions
from recovery.partitions import init_partitions
from tests.test_recovery_support import counting_flow, final_sums, run, run_in_subprocess, segments

STEP = "count.sum.stateful_flat_map.stateful.stateful_batch"


def _churn(rounds: int) -> list:
    """Per round, 40 new keys that get two values and are discarded; 10 live keys +1."""
    spec: list = []
    for r in range(rounds):
        spec += [[f"r{r}-", 80, 40, 1], [f"r{r}-", 40, 40, None], ["live", 10, 10, 1]]
    return spec


def _rows(rd: Path) -> int:
    return inspect_partitions(rd)["totals"]["rows"]


def test_compaction_bounds_rows_under_ttl_churn(tmp_path: Path) -> None:
    plain, compacted = tmp_path / "plain", tmp_path / "compacted"
    for rd in (plain, compacted):
        init_partitions(rd, 2)
    plain_rows, compacted_rows = [], []
    for rounds in range(1, 7):
        spec = _churn(rounds)
        for rd in (plain, compacted):
            run(counting_flow(segments(spec), []), rd, backup_s=0)
        compact(compacted)
        plain_rows.append(_rows(plain))
        compacted_rows.append(_rows(compacted))
    # Without compaction, discarded keys leave rows forever; with it, only the
    # live keys (10 + the input partition) and rows above the commit epoch remain.
    assert plain_rows[-1] >= 6 * 40
    assert plain_rows == sorted(plain_rows) and plain_rows[-1] > plain_rows[0] + 150
    assert max(compacted_rows) <= 11 + 2 * 2
    info = inspect_partitions(compacted)
    assert info["steps"][STEP]["keys"] == 10 and info["steps"][STEP]["operator"] is True
    assert info["steps"]["count.inp"]["operator"] is False
    json.dumps(info)  # JSON-able
    # The compacted directory resumes to the same state as the plain one.
    more = segments(_churn(6) + [["live", 10, 10, 2]])
    a: list = []
    b: list = []
    run(counting_flow(more, a), plain, backup_s=0)
    run(counting_flow(more, b), compacted, backup_s=0)
    assert final_sums(a) == final_sums(b) == {f"live{i}": 8 for i in range(10)}


def test_compaction_while_the_flow_runs(tmp_path: Path) -> None:
    """Compaction in this process while the flow writes in another one."""
    rd = tmp_path / "rec"
    init_partitions(rd, 2)
    spec = _churn(150)
    proc = run_in_subprocess(rd, spec, backup_s=0)
    removed = 0
    try:
        while proc.poll() is None:
            removed += compact(rd)
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0
    removed += compact(rd)
    assert removed > 0
    out: list = []
    run(counting_flow(segments(spec + [["live", 10, 10, 1]]), out), rd)
    assert final_sums(out) == {f"live{i}": 151 for i in range(10)}
    assert _rows(rd) <= 11 + 20 * 2
