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

File -> file here, and the orders pipeline Kafka -> Kafka exactly-once below (Mongo resume
tokens are state of the same kind, in the same partitions, and travel the same way: not run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from recovery.cluster_checkpoint import local_answers, restore_process, take_cluster_snapshot
from recovery.inspect import inspect_partitions
from recovery.manifest import Manifest
from recovery.partitions import part_index, partition_files
from recovery.placement import owned
from recovery.positions import source_positions
from recovery.restore import restore
from recovery.store import ObjectStore, open_store
from streamforge_ops.cluster import Cluster
from tests.supervisor_harness import REPO, Workspace, assert_exactly_once, read_rows, write_input

PARTS = 4
PER_STAGE = 15


def run_cluster(cfg: Path, dirs: list[Path], log_dir: Path, flow: str = "tests.supervised_flow:flow",
                env: dict[str, str] | None = None) -> None:
    """Run `flow` over `len(dirs)` processes until its input is consumed (every process exits 0)."""
    addresses = Cluster(("",) * len(dirs), tuple(range(len(dirs))), loopback=True).renewed().addresses
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "STREAMFORGE_CONFIG": str(cfg), "SF_TEST_TAG": "t",
                **(env or {})}
    procs = []
    for k, d in enumerate(dirs):
        argv = [sys.executable, "-m", "bytewax.run", flow, "-r", str(d), "-s", "0", "-b", "0"]
        if len(dirs) > 1:
            argv += ["-i", str(k), "-a", ";".join(addresses)]
        err = (log_dir / f"{d.parent.name}-{d.name}.err").open("wb")
        procs.append(subprocess.Popen(argv, cwd=REPO, env=full_env, stdout=err, stderr=err))
    try:
        codes = [p.wait(120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0] * len(dirs), [(log_dir / f"{d.parent.name}-{d.name}.err").read_text()[-2000:]
                                      for d in dirs]


def restore_stage(store: ObjectStore, dirs: list[Path], pipeline: str, previous: Manifest | None) -> None:
    """Restore each process directory (new, empty) from the store for `len(dirs)` processes:
    the previous stage's savepoint, or fresh partitions for the first stage."""
    for k, d in enumerate(dirs):
        result = restore_process(d, process_id=k, processes=len(dirs), checkpoint_store=store,
                                 savepoint_store=store, pipeline=pipeline, partition_count=PARTS)
        assert (result.chosen, result.id) == (("fresh", None) if previous is None
                                              else ("savepoint", previous.id))
        assert [part_index(f) for f in partition_files(d)] == owned(k, len(dirs), PARTS)


def savepoint_stage(store: ObjectStore, dirs: list[Path], pipeline: str, stage: int) -> Manifest:
    """One coordinated savepoint of the stopped stage's directories."""
    return take_cluster_snapshot(dirs[0], store, pipeline=pipeline, processes=len(dirs),
                                 partition_count=PARTS, kind="savepoint", name=f"stage-{stage}",
                                 answer_others=local_answers(dirs, store))


def test_rescale_1_2_3_1_through_savepoints(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, n=0)
    ws.input.write_text("")
    store = open_store(ws.store_url)
    cfg = ws.config()
    previous = None
    for stage, processes in enumerate((1, 2, 3, 1)):
        write_input(ws.input, PER_STAGE, start=stage * PER_STAGE)
        dirs = [tmp_path / f"stage-{stage}" / f"proc-{k}" for k in range(processes)]
        restore_stage(store, dirs, "sup", previous)
        run_cluster(cfg, dirs, tmp_path)
        previous = savepoint_stage(store, dirs, "sup", stage)
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


def test_rescale_kafka_exactly_once_1_2_3_1_through_savepoints(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The orders pipeline, Kafka (4 partitions) -> Kafka exactly-once, the same stages: a
    quarter of the input is produced before each stage, which reads to the end of the topic.
    The Kafka offsets (input step), the dedup/merge state and the transactional sink's
    position cross every rescale in the partitions: the read_committed output equals the
    in-memory run of the whole input, 0 lost, 0 duplicated."""
    from tests.fixtures.kafka import create_topic, free_port, read_topic
    from tests.test_cluster import _expected_changes, _orders_lines, _produce_by_key
    from tests.test_kafka_harness import orders_config

    tag = f"{os.getpid()}-{free_port()}"
    src = create_topic(kafka_bootstrap, f"rs-in-{tag}", PARTS)
    out = create_topic(kafka_bootstrap, f"rs-out-{tag}", 2)
    dlq = create_topic(kafka_bootstrap, f"rs-dlq-{tag}", 1)
    cfg = orders_config(kafka_bootstrap, src, out, dlq)
    cfg["patterns"]["dedup"]["ttl"] = "100000h"  # no expiry that depends on progress
    cfg["recovery"] = {"partitions": PARTS}
    config = tmp_path / "orders.yaml"
    config.write_text(yaml.safe_dump(cfg))
    store = open_store(str(tmp_path / "store"))
    lines = _orders_lines()[:600]
    placed: list[tuple[bytes, int, int]] = []
    counts: Counter[int] = Counter()
    ended: Counter[int] = Counter()  # records per input partition when the last stage ended
    previous = None
    for stage, processes in enumerate((1, 2, 3, 1)):
        quarter = lines[stage * 150:(stage + 1) * 150]
        for line, part, offset in _produce_by_key(kafka_bootstrap, src, quarter):
            placed.append((line, part, offset + counts[part]))  # offsets go on from the last stage
        counts = Counter(p for _, p, _ in placed)
        dirs = [tmp_path / f"stage-{stage}" / f"proc-{k}" for k in range(processes)]
        restore_stage(store, dirs, "orders", previous)
        if previous is not None:  # the offsets the last stage ended at, now with their new owners
            restored = source_positions([f for d in dirs for f in partition_files(d)])
            assert restored["orders.source"] == {f"{p}-{src}": n for p, n in ended.items()}
        ended = counts
        run_cluster(config, dirs, tmp_path, flow="dataflows.pipelines.orders:flow")
        previous = savepoint_stage(store, dirs, "orders", stage)
    want = _expected_changes(cfg, src, placed)
    got = Counter(json.dumps(json.loads(m.value() or b"null"), sort_keys=True)
                  for m in read_topic(kafka_bootstrap, out, partitions=2, timeout_s=120))
    assert sum(want.values()) > 100
    assert got == want, f"lost {sum((want - got).values())}, duplicated {sum((got - want).values())}"
