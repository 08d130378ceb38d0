"""Rescale a Bytewax cluster through coordinated savepoints: 1 -> 2 -> 3 -> 1 processes.

Each stage runs the test pipeline (tests/supervised_flow.py: file -> file, keyed running
totals, `FileSink` truncated to its snapshotted offset on resume) as a real Bytewax cluster,
`python -m bytewax.run FLOW -i K -a "a0;a1;..."`, one recovery directory per process holding
only the partitions `placement.owned` gives it (a pod's layout). After the stage's input is
consumed, a coordinated savepoint is taken of all its directories
(`cluster_checkpoint.take_cluster_snapshot`); the next stage starts from new, empty
directories restored from that savepoint onto its own process count
(`cluster_checkpoint.restore_process`). The output must equal, row for row, that of one
process that ran over the whole input without ever rescaling: the file offset, the keyed
state and the sink's position all went where Bytewax routes them.

(File -> file; the Kafka offsets and Mongo resume tokens are state of the same kind, in the
same partitions, and travel the same way.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from recovery.cluster_checkpoint import local_answers, restore_process, take_cluster_snapshot
from recovery.inspect import inspect_partitions
from recovery.partitions import part_index, partition_files
from recovery.placement import owned
from recovery.restore import restore
from recovery.store import open_store
from streamforge_ops.cluster import Cluster
from tests.supervisor_harness import REPO, Workspace, assert_exactly_once, read_rows, write_input

PARTS = 4
PER_STAGE = 15


def run_cluster(cfg: Path, dirs: list[Path], log_dir: Path) -> None:
    """Run the flow over `len(dirs)` processes until its input is consumed (every process exits 0)."""
    addresses = Cluster(("",) * len(dirs), tuple(range(len(dirs))), loopback=True).renewed().addresses
    env = {**os.environ, "PYTHONPATH": str(REPO), "STREAMFORGE_CONFIG": str(cfg), "SF_TEST_TAG": "t"}
    procs = []
    for k, d in enumerate(dirs):
        argv = [sys.executable, "-m", "bytewax.run", "tests.supervised_flow:flow", "-r", str(d),
                "-s", "0", "-b", "0"]
        if len(dirs) > 1:
            argv += ["-i", str(k), "-a", ";".join(addresses)]
        err = (log_dir / f"{d.parent.name}-{d.name}.err").open("wb")
        procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=err, stderr=err))
    try:
        codes = [p.wait(120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0] * len(dirs), [(log_dir / f"{d.parent.name}-{d.name}.err").read_text()[-2000:]
                                      for d in dirs]


def test_rescale_1_2_3_1_through_savepoints(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, n=0)
    ws.input.write_text("")
    store = open_store(ws.store_url)
    cfg = ws.config()
    previous = None
    for stage, processes in enumerate((1, 2, 3, 1)):
        write_input(ws.input, PER_STAGE, start=stage * PER_STAGE)
        dirs = [tmp_path / f"stage-{stage}" / f"proc-{k}" for k in range(processes)]
        for k, d in enumerate(dirs):
            result = restore_process(d, process_id=k, processes=processes, checkpoint_store=store,
                                     savepoint_store=store, pipeline="sup", partition_count=PARTS)
            assert (result.chosen, result.id) == (("fresh", None) if previous is None
                                                  else ("savepoint", previous.id))
            assert [part_index(f) for f in partition_files(d)] == owned(k, processes, PARTS)
        run_cluster(cfg, dirs, tmp_path)
        previous = take_cluster_snapshot(dirs[0], store, pipeline="sup", processes=processes,
                                         partition_count=PARTS, kind="savepoint",
                                         name=f"stage-{stage}",
                                         answer_others=local_answers(dirs, store))
    rows = read_rows(ws.output)
    assert_exactly_once(rows, 4 * PER_STAGE)
    final = tmp_path / "final"  # the last savepoint, every partition in one directory
    restore(final, checkpoint_store=store, savepoint_store=store, pipeline="sup",
            partition_count=PARTS, target=("savepoint", "stage-3"))
    assert [e["worker_count"] for e in inspect_partitions(final)["executions"]] == [1, 2, 3, 1]

    never_rescaled = tmp_path / "reference"
    ref_cfg = ws.config("reference.yaml", sink={"path": str(tmp_path / "reference.jsonl")})
    restore_process(never_rescaled, process_id=0, processes=1, checkpoint_store=open_store(
        str(tmp_path / "empty")), savepoint_store=open_store(str(tmp_path / "empty")),
        pipeline="sup", partition_count=PARTS)
    run_cluster(ref_cfg, [never_rescaled], tmp_path)
    reference = read_rows(tmp_path / "reference.jsonl")
    assert sorted(rows, key=lambda r: r["id"]) == sorted(reference, key=lambda r: r["id"])
