"""`streamforge run` end to end with a real Bytewax child and the file:// store.

Every test runs the real CLI as a process (`python -m streamforge_ops run`),
drives it with real signals and reads its real HTTP endpoints; conditions are
polled with deadlines (tests.supervisor_harness.wait_for), never slept on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from recovery.checkpoint import list_checkpoints
from recovery.savepoint import list_savepoints
from recovery.store import open_store
from tests.supervisor_harness import (
    Workspace,
    assert_exactly_once,
    http_get,
    read_rows,
    sample,
    scrape,
    wait_for,
)


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_crash_restart_metrics_and_health(tmp_path: Path) -> None:
    """kill -9 the child: it restarts, restarts_total rises, output is complete and exact;
    /metrics (parsed with prometheus_client), /healthz and /readyz answer while it runs.
    The source tails its file (never ends by itself), so the kill always lands mid-run."""
    ws = Workspace(tmp_path, n=400)
    proc = ws.start("--json", config=ws.config(source={"tail": True, "delay": 0.05, "batch-size": 4}))
    st = ws.running(proc)
    port, first_child = st["port"], st["child_pid"]
    code, body = http_get(port, "/readyz")
    assert code == 200 and json.loads(body)["restore"] == "fresh"
    wait_for(lambda: sample(scrape(port), "streamforge_checkpoints_completed_total",
                            pipeline="sup", kind="checkpoint") >= 2, what="two checkpoints in /metrics")
    assert http_get(port, "/healthz")[0] == 200
    assert sample(scrape(port), "streamforge_restarts_total", pipeline="sup") == 0

    wait_for(lambda: len(read_rows(ws.output)) >= 40, what="some output before the crash")
    os.kill(first_child, signal.SIGKILL)
    wait_for(lambda: sample(scrape(port), "streamforge_restarts_total", pipeline="sup") == 1,
             what="restarts_total to rise")
    st = wait_for(lambda: (s := ws.status()).get("child_pid") not in (None, first_child) and s,
                  what="a new child")
    assert st["restarts"] == 1
    metrics = scrape(port)
    assert sample(metrics, "streamforge_checkpoint_duration_ms_count", kind="checkpoint") >= 2
    assert sample(metrics, "streamforge_last_checkpoint_timestamp_seconds", pipeline="sup") > 0

    wait_for(lambda: len(read_rows(ws.output)) == 400, what="all input processed")
    code, out, err = ws.stop(proc, signal.SIGTERM)
    assert code == 0, err
    summary = _summary(out)
    assert summary["outcome"] == "cancelled" and summary["restarts"] == 1
    assert_exactly_once(read_rows(ws.output), 400)


def test_sigterm_savepoint_then_second_run_resumes(tmp_path: Path) -> None:
    """SIGTERM: child stopped, savepoint taken, checkpoints retained. A second run resumes
    the local partitions (rows of run 1 up to its last epoch keep their tag: they were not
    recomputed; the file sink truncates the rest and run 2 rewrites them). With the
    recovery dir gone, a third run restores the latest checkpoint from the store."""
    ws = Workspace(tmp_path, n=300)
    tail = ws.config(source={"tail": True, "delay": 0.05})
    proc = ws.start("--json", config=tail)
    ws.running(proc)
    wait_for(lambda: len(read_rows(ws.output)) >= 60 and ws.status().get("checkpoints", 0) >= 2,
             what="output and a checkpoint before SIGTERM")
    code, out, err = ws.stop(proc, signal.SIGTERM)
    assert code == 0, err
    summary = _summary(out)
    assert summary["outcome"] == "cancelled" and summary["savepoint"]
    store = open_store(ws.store_url)
    assert [m.id for m in list_savepoints(store, "sup")] == [summary["savepoint"]]
    assert list_checkpoints(store, "sup"), "RETAIN_ON_CANCELLATION keeps checkpoints"
    first = {r["id"] for r in read_rows(ws.output)}
    assert 0 < len(first) < 300

    code, out, err = ws.finish(ws.start("--json"))  # bounded: finishes the input
    assert code == 0, err
    summary = _summary(out)
    assert (summary["outcome"], summary["restored"]["chosen"]) == ("completed", "local")
    assert summary["checkpoints"] >= 1  # at least the final checkpoint
    rows = read_rows(ws.output)
    assert_exactly_once(rows, 300)
    kept = sorted(r["id"] for r in rows if r["tag"] == "1")  # up to the last durable epoch
    assert kept and set(kept) <= first and kept == list(range(len(kept)))

    shutil.rmtree(ws.recovery)
    code, out, err = ws.finish(ws.start("--json"))
    assert code == 0, err
    assert _summary(out)["restored"]["chosen"] == "checkpoint"
    assert read_rows(ws.output) == rows, "restored at the end of input: nothing recomputed"


def test_checkpoint_failure_does_not_stop_the_flow(tmp_path: Path) -> None:
    """checkpoints.dir points below a regular file (unwritable even as root): every
    checkpoint fails, is counted in /metrics, /healthz turns 503, the flow processes all
    of its input anyway."""
    ws = Workspace(tmp_path, n=300)
    (tmp_path / "blocker").write_text("not a directory")
    bad = f"file://{tmp_path}/blocker/store"
    proc = ws.start("--json", config=ws.config(
        source={"tail": True, "delay": 0.05, "batch-size": 3},
        checkpoints={"dir": bad, "interval": "0.5s"},
        metrics={"port": 0, "host": "127.0.0.1", "unhealthy-after-intervals": 2},
    ))
    port = ws.running(proc)["port"]
    wait_for(lambda: sample(scrape(port), "streamforge_checkpoint_failure_count_total",
                            pipeline="sup", kind="checkpoint") >= 2, what="failed checkpoints counted")
    code, body = wait_for(lambda: (r := http_get(port, "/healthz"))[0] == 503 and r,
                          what="/healthz to turn unhealthy")
    assert "no checkpoint yet" in json.loads(body)["problems"][0]
    assert http_get(port, "/readyz")[0] == 200  # unhealthy, yet still running
    wait_for(lambda: len(read_rows(ws.output)) == 300, what="all input processed")
    code, out, err = ws.stop(proc, signal.SIGTERM)
    assert code == 0, err
    summary = _summary(out)
    assert summary["checkpoints"] == 0 and summary["checkpoint_failures"] >= 2
    assert summary["savepoint"], "the savepoint store is fine: the cancel savepoint is taken"
    assert "checkpoint FAILED" in err
    assert_exactly_once(read_rows(ws.output), 300)

