"""The supervisor under faults (issue 9 item 12): config errors, crash loops, stuck stores, kill -9.

Real processes throughout: `python -m streamforge_ops run` with a real Bytewax child
(tests/supervised_flow.py); a stuck object store is moto behind the fault-injecting HTTP
proxy (tests/fixtures/fault_proxy.py) holding the matching requests far longer than any
timeout, like a hung load balancer. Conditions are polled with deadlines; a supervisor that
does not exit within `Workspace.finish`'s deadline counts as stuck.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from recovery.checkpoint import list_checkpoints
from recovery.lease import pid_alive  # alive and not a zombie
from recovery.store import open_store
from tests.fixtures.fault_proxy import FaultS3
from tests.supervisor_harness import Workspace, assert_exactly_once, read_rows, wait_for


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_config_error_while_the_flow_is_built_fails_at_start(tmp_path: Path) -> None:
    """`source.path` matching no file (the real orders pipeline's check): exit 2 with the
    message naming the key, the child is never started, never restarted."""
    ws = Workspace(tmp_path, n=5, flow="dataflows.pipelines.orders:flow")
    cfg = ws.config(source={"path": str(tmp_path / "nothing" / "*.jsonl")},
                    recovery={"max-restarts": 3, "restart-backoff": "0.05s"})
    code, out, err = ws.finish(ws.start("--json", config=cfg))
    assert code == 2, err
    assert "source.path" in err and "no file matches" in err, err
    assert "restarting in" not in err and "started dataflow" not in err, err
    assert "Traceback" not in err


def test_bad_flow_import_fails_at_start(tmp_path: Path) -> None:
    """`pipeline.flow` naming a module that does not exist can never start: exit 2, no restart."""
    ws = Workspace(tmp_path, n=5, flow="tests.no_such_module:flow")
    code, _, err = ws.finish(ws.start(config=ws.config(recovery={"restart-backoff": "0.05s"})))
    assert code == 2, err
    assert "tests.no_such_module" in err and "restarting in" not in err, err


def test_config_error_on_a_restart_is_a_crash_bounded_by_max_restarts(tmp_path: Path) -> None:
    """The flow ran, then its input vanished and the child was killed: every restarted child
    fails to build (`streamforge: cannot start: source.path ...`, exit 2). Having run before,
    that is a crash, not "can never start": restarted with backoff until recovery.max-restarts
    within the window, then exit 1 with a 'failed' summary."""
    ws = Workspace(tmp_path, n=400)
    cfg = ws.config(source={"tail": True, "delay": 0.05},
                    recovery={"max-restarts": 3, "restart-backoff": "0.05s"})
    proc = ws.start("--json", config=cfg)
    child = ws.running(proc)["child_pid"]
    wait_for(lambda: read_rows(ws.output), what="some output")
    ws.input.rename(tmp_path / "moved.jsonl")
    os.kill(child, signal.SIGKILL)
    code, out, err = ws.finish(proc)
    assert code == 1, err
    assert err.count("cannot start: source.path") == 3 and "max-restarts (3) reached" in err, err
    assert _summary(out)["outcome"] == "failed"


def test_unreachable_kafka_at_start_is_not_a_config_error(tmp_path: Path) -> None:
    """Kafka brokers that do not answer while the flow is built (KafkaStartError 'did not
    answer metadata') may come back: the supervisor does not refuse to start (exit 2) but runs
    the restart loop; here it ends at max-restarts (exit 1)."""
    ws = Workspace(tmp_path, n=5, flow="dataflows.pipelines.orders:flow")
    cfg = ws.config(source={"type": "kafka", "brokers": "127.0.0.1:9", "topics": ["orders"],
                            "metadata-timeout": "0.5s"},
                    recovery={"max-restarts": 1, "restart-backoff": "0.05s"})
    code, _, err = ws.finish(ws.start("--json", config=cfg))
    assert code == 1, err
    assert "did not answer" in err and "restarting in" in err, err
    assert "max-restarts (1) reached" in err, err


def test_max_restarts_counts_only_the_restart_window(tmp_path: Path) -> None:
    """recovery.max-restarts is counted over recovery.restart-window, not the lifetime:
    with one restart allowed per 0.3 s window and 1 s between restarts, a crashing child
    is restarted again and again (a lifetime count would give up after the first)."""
    ws = Workspace(tmp_path, n=10)
    cfg = ws.config(source={"crash": True},
                    recovery={"max-restarts": 1, "restart-window": "0.3s", "restart-backoff": "1s",
                              "max-restart-backoff": "1s", "restart-multiplier": 1.0})
    proc = ws.start("--json", config=cfg)

    def restarted_three_times() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"supervisor gave up: {ws.stderr(proc)}")
        return ws.status().get("restarts", 0) >= 3

    wait_for(restarted_three_times, timeout=60, what="three restarts")
    code, out, err = ws.stop(proc)
    assert code == 0, err
    assert _summary(out)["restarts"] >= 3


def test_max_restarts_within_the_window_gives_up(tmp_path: Path) -> None:
    """A child that crashes on every start: after max-restarts restarts within the window the
    supervisor exits 1 with a 'failed' summary."""
    ws = Workspace(tmp_path, n=10)
    cfg = ws.config(source={"crash": True}, recovery={"max-restarts": 2, "restart-backoff": "0.05s"})
    code, out, err = ws.finish(ws.start("--json", config=cfg))
    assert code == 1, err
    summary = _summary(out)
    assert (summary["outcome"], summary["restarts"]) == ("failed", 2)
    assert err.count("restarting in") == 2 and "max-restarts (2) reached" in err


def test_stop_does_not_wait_forever_on_a_stuck_checkpoint(tmp_path: Path, fault_s3: FaultS3) -> None:
    """SIGTERM while a checkpoint upload hangs (the store holds every PUT for 10 min):
    _drain waits at most checkpoints.timeout, then the cancel savepoint (file store) is
    taken and the supervisor exits 0."""
    ws = Workspace(tmp_path, n=400)
    cfg = ws.config(source={"tail": True, "delay": 0.05},
                    checkpoints={"dir": fault_s3.url, "endpoint-url": fault_s3.endpoint_url,
                                 "timeout": "2s"},
                    savepoints={"dir": f"file://{tmp_path / 'sp'}"})
    fault_s3.proxy.set_mode("delay", delay_s=600, match=r"^PUT ")
    proc = ws.start("--json", config=cfg)
    ws.running(proc)
    wait_for(lambda: fault_s3.proxy.faulted >= 1, what="a checkpoint upload to hang")
    code, out, err = ws.stop(proc)
    assert code == 0, err
    assert "still running after checkpoints.timeout" in err, err
    assert _summary(out)["savepoint"], err


def test_cancel_savepoint_timeout_exits_non_zero_and_keeps_checkpoints(
    tmp_path: Path, fault_s3: FaultS3,
) -> None:
    """The SIGTERM savepoint hangs (its store holds every PUT): after savepoints.timeout the
    supervisor exits non-zero with a clear line, and DELETE_ON_CANCELLATION does not delete
    the checkpoints (they are the only state left)."""
    ws = Workspace(tmp_path, n=400)
    cfg = ws.config(source={"tail": True, "delay": 0.05},
                    checkpoints={"externalized-retention": "DELETE_ON_CANCELLATION"},
                    savepoints={"dir": fault_s3.url, "endpoint-url": fault_s3.endpoint_url,
                                "timeout": "1s"})
    proc = ws.start("--json", config=cfg)
    ws.running(proc)
    wait_for(lambda: ws.status().get("checkpoints", 0) >= 1, what="a checkpoint")
    fault_s3.proxy.set_mode("delay", delay_s=600, match=r"^PUT ")
    code, out, err = ws.stop(proc)
    assert code == 1, err
    assert "savepoints.timeout" in err and "kept" in err, err
    assert list_checkpoints(open_store(ws.store_url), "sup"), "the checkpoints are kept"
    assert _summary(out)["outcome"] == "savepoint-timeout"


def test_kill_9_of_the_supervisor_takes_the_child_along_and_the_next_start_resumes(
    tmp_path: Path,
) -> None:
    """kill -9 of the supervisor: the child dies with it (parent-death signal), no orphan keeps
    writing; the next `run` finds the stale pid file, resumes (the local partitions, or the newest checkpoint) and ends
    with every record exactly once."""
    ws = Workspace(tmp_path, n=300)
    proc = ws.start(config=ws.config(source={"delay": 0.05}))
    child = ws.running(proc)["child_pid"]
    wait_for(lambda: len(read_rows(ws.output)) >= 30 and ws.status().get("checkpoints", 0) >= 1,
             what="some output and durable progress")
    proc.kill()
    proc.wait()
    wait_for(lambda: not pid_alive(child), what="the orphaned child to die")
    assert (tmp_path / "supervisor.pid").exists(), "kill -9 leaves the pid file behind"
    code, out, err = ws.finish(ws.start("--json"))
    assert code == 0, err
    assert _summary(out)["restored"]["chosen"] in ("local", "checkpoint")
    assert_exactly_once(read_rows(ws.output), 300)


def test_prestop_savepoint_create_gives_up_after_savepoints_timeout(
    tmp_path: Path, fault_s3: FaultS3,
) -> None:
    """`streamforge savepoint create` (the pod's preStop hook) against a store that holds every
    PUT: it exits 1 after savepoints.timeout with a message naming the key, not after the
    store client's own retries (minutes) or never."""
    ws = Workspace(tmp_path, n=20)
    assert ws.finish(ws.start())[0] == 0  # partitions to take a savepoint of
    cfg = ws.config("prestop.yaml", savepoints={"dir": fault_s3.url, "endpoint-url": fault_s3.endpoint_url,
                                                "timeout": "1s"})
    fault_s3.proxy.set_mode("delay", delay_s=600, match=r"^PUT ")
    code, _, err = ws.finish(ws.start("--name", "prestop", config=cfg, command="savepoint create"))
    assert code == 1, err
    assert "savepoints.timeout (1s)" in err, err


def test_config_error_raised_when_the_run_starts_fails_at_start(tmp_path: Path) -> None:
    """A ConfigError raised inside Bytewax once the run starts (a sink's `build_part` refusing
    its resume state, e.g. a changed output partition count) reaches the process top level
    wrapped in a BytewaxRuntimeError; the first child exits 2 with the one-line reason and
    the supervisor does not restart it (without the mapping: exit 1, restarted with backoff)."""
    ws = Workspace(tmp_path, n=5, flow="tests.run_config_error_flow:flow")
    cfg = ws.config(recovery={"max-restarts": 3, "restart-backoff": "0.05s"})
    code, _, err = ws.finish(ws.start(config=cfg))
    assert code == 2, err
    assert "sink.partitions: the output topic has 8 partitions" in err, err
    assert "restarting in" not in err, err
