"""Rescaling: a recovery directory resumes with a different worker count.

Bytewax routes state keys to partitions (fixed at init), not to workers, and
assigns partitions to workers at each start, so 1 -> 2 -> 1 workers over the
same 4 partitions gives the same results as one uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

from recovery.inspect import inspect_partitions
from recovery.partitions import init_partitions
from tests.test_recovery_support import counting_flow, final_sums, run, segments


def test_rescale_1_2_1_workers(tmp_path: Path) -> None:
    rd = tmp_path / "rec"
    init_partitions(rd, 4)
    stages = [[["k", 400, 60, 1]], [["k", 300, 60, 2]], [["k", 200, 60, 3]]]
    spec: list = []
    outs: list = []
    for workers, stage in zip((1, 2, 1), stages, strict=True):
        spec += stage
        out: list = []
        run(counting_flow(segments(spec), out), rd, workers=workers)
        outs += out
    reference: list = []
    run(counting_flow(segments(spec), reference), None)
    assert final_sums(outs) == final_sums(reference)
    assert [e["worker_count"] for e in inspect_partitions(rd)["executions"]] == [1, 2, 1]
