"""Epoch alignment metrics (streamforge_ops/epochs.py): how long each Bytewax epoch took to
close, and the last snapshot write time from Bytewax's own `partd_write_duration_seconds`.

End to end: a supervised run with the dataflow API enabled exports both on the supervisor's
/metrics. Unit: the frontier arithmetic with a controlled clock over real partitions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dataflows import metrics
from recovery.partitions import init_partitions
from streamforge_ops.epochs import EpochWatch, cluster_frontier, partd_write_totals
from tests.fixtures.kafka import free_port
from tests.supervisor_harness import Workspace, sample, scrape, wait_for

BYTEWAX_METRICS = """# HELP partd_write_duration_seconds partitioned state write duration in seconds
# TYPE partd_write_duration_seconds histogram
partd_write_duration_seconds_bucket{worker_id="0",part_id="0",le="+Inf"} 4
partd_write_duration_seconds_sum{worker_id="0",part_id="0"} 0.2
partd_write_duration_seconds_count{worker_id="0",part_id="0"} 4
partd_write_duration_seconds_bucket{worker_id="0",part_id="1",le="+Inf"} 1
partd_write_duration_seconds_sum{worker_id="0",part_id="1"} 0.05
partd_write_duration_seconds_count{worker_id="0",part_id="1"} 1
"""


def _front(rdir: Path, ex: int, worker: int, frontier: int) -> None:
    with sqlite3.connect(rdir / f"part-{worker}.sqlite3") as conn:
        conn.execute("INSERT OR REPLACE INTO fronts (ex_num, worker_index, worker_frontier) VALUES (?, ?, ?)",
                     (ex, worker, frontier))


def _close_count(pipeline: str) -> tuple[float, float]:
    h = metrics.EPOCH_CLOSE.labels(pipeline=pipeline)
    samples = {s.name: s.value for m in h.collect() for s in m.samples if not s.labels.get("le")}
    return samples["streamforge_epoch_close_seconds_count"], samples["streamforge_epoch_close_seconds_sum"]


def test_epoch_close_from_the_frontier(tmp_path: Path) -> None:
    """The barrier is the slowest worker: 2 epochs in 6 s -> two observations of 3 s; a restart
    (new execution, lower frontier) re-bases without an observation."""
    rdir = tmp_path / "rec"
    init_partitions(rdir, 2)
    now = [100.0]
    watch = EpochWatch(rdir, "unit-epochs", clock=lambda: now[0], scrape_url="")
    _front(rdir, 1, 0, 5)
    _front(rdir, 1, 1, 5)
    watch.poll()
    assert cluster_frontier(rdir) == 5
    _front(rdir, 1, 0, 9)  # worker 1 still at 5: no epoch closed
    now[0] += 4
    watch.poll()
    assert _close_count("unit-epochs") == (0, 0)
    _front(rdir, 1, 1, 7)
    now[0] += 2
    watch.poll()
    assert _close_count("unit-epochs") == (2, 6.0)
    _front(rdir, 2, 0, 6)  # a restart resumed at epoch 6
    _front(rdir, 2, 1, 6)
    now[0] += 30
    watch.poll()
    _front(rdir, 2, 1, 7)
    _front(rdir, 2, 0, 7)
    now[0] += 1
    watch.poll()
    assert _close_count("unit-epochs") == (3, 7.0)


def test_partd_write_totals_sum_over_partitions() -> None:
    """Bytewax's exporter prefixes its names with `bytewax_` (seen on a live /metrics); both parse."""
    assert partd_write_totals(BYTEWAX_METRICS) == (0.25, 5)
    assert partd_write_totals(BYTEWAX_METRICS.replace("partd_", "bytewax_partd_")) == (0.25, 5)


def test_supervised_run_exports_epoch_and_snapshot_write_metrics(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, n=2000)
    cfg = ws.config(source={"tail": True, "delay": 0.05})
    api = free_port()
    proc = ws.start(config=cfg, env={"BYTEWAX_DATAFLOW_API_ENABLED": "true",
                                     "BYTEWAX_DATAFLOW_API_PORT": str(api)})
    try:
        port = ws.running(proc)["port"]

        def exported() -> bool:
            m = scrape(port)
            return (sample(m, "streamforge_epoch_close_seconds_count", pipeline="sup") >= 2
                    and sample(m, "streamforge_last_snapshot_write_seconds", pipeline="sup") > 0)

        wait_for(exported, timeout=60, what="epoch close and snapshot write metrics")
        m = scrape(port)
        mean = (sample(m, "streamforge_epoch_close_seconds_sum", pipeline="sup")
                / sample(m, "streamforge_epoch_close_seconds_count", pipeline="sup"))
        assert mean > 0.5, "epochs close about every recovery.snapshot-interval (1s here)"
    finally:
        ws.stop(proc)
