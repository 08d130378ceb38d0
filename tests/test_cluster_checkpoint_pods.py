"""Coordinated checkpoints and the cancel savepoint of a cluster of pod supervisors.

Two supervisors, `streamforge run --process-id 0|1 --addresses ...`, each with its own
recovery.dir (its own "volume"), on 127.0.0.1 and 127.0.0.2 with the same metrics.port (as
two pods), sharing one file:// store: process 0 takes the cluster's checkpoints and its
cancel savepoint, process 1 answers them (streamforge_ops.cluster_state).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from recovery.checkpoint import list_checkpoints
from recovery.cluster_checkpoint import pending_request
from recovery.savepoint import list_savepoints
from recovery.store import open_store
from tests.fixtures.kafka import free_port
from tests.supervisor_harness import Workspace, assert_exactly_once, read_rows, wait_for


def _pods(ws: Workspace, tmp_path: Path, n: int = 2, tag: str = "pod",
          source: dict[str, Any] | None = None, **overrides: Any) -> tuple[str, list[Path]]:
    """`n` pods' addresses (127.0.0.K+1) and configs: each its own recovery.dir under
    `tmp_path/<tag>K`, the same metrics.port on its own host."""
    addrs = ";".join(f"127.0.0.{k + 1}:{free_port()}" for k in range(n))
    mport = free_port()
    cfgs = [ws.config(f"{tag}{k}.yaml", source=source or {"tail": True, "delay": 0.05, "batch-size": 4},
                      recovery={"dir": str(tmp_path / f"{tag}{k}" / "recovery")},
                      metrics={"port": mport, "host": f"127.0.0.{k + 1}"}, **overrides)
            for k in range(n)]
    return addrs, cfgs


def _status(tmp_path: Path, k: int) -> dict[str, Any]:
    try:
        return dict(json.loads((tmp_path / f"pod{k}" / "supervisor.json").read_text()))
    except (OSError, ValueError):
        return {}


def test_pods_checkpoint_as_one_cluster_and_cancel_with_one_savepoint(tmp_path: Path) -> None:
    """Checkpoints hold both processes' partitions at one epoch; SIGTERM to both takes ONE
    savepoint (process 0's, answered by process 1). Rescale 2 -> 3 pods through it: each
    new pod (a new, empty volume) restores its share, the bounded rest of the input ends
    with process 0's final checkpoint (answered by the others), exactly once."""
    ws = Workspace(tmp_path, n=200)
    store = open_store(ws.store_url)
    addrs, cfgs = _pods(ws, tmp_path)
    pods = [ws.start("--process-id", str(k), "--addresses", addrs, config=cfgs[k]) for k in (0, 1)]

    def cluster_checkpoint() -> bool:
        return any({e.object.split("/")[3] for e in m.partitions} == {"proc-0", "proc-1"}
                   and len(m.partitions) == 4 for m in list_checkpoints(store, "sup"))

    wait_for(cluster_checkpoint, what="a checkpoint of both processes", timeout=90)
    wait_for(lambda: len(read_rows(ws.output)) >= 20, what="output from the cluster", timeout=60)
    # `kubectl exec` of `savepoint create` in a pod (its env names the process): process 0
    # coordinates it while the cluster runs; process 1 refuses, naming process 0
    def savepoint_create(k: int) -> tuple[int, str, str]:
        env = {"STREAMFORGE_PROCESS_ID": str(k), "STREAMFORGE_ADDRESSES": addrs}
        return ws.finish(ws.start("--name", "manual", config=cfgs[k], env=env,
                                  command="savepoint create"), timeout=120)

    code, _, err = savepoint_create(1)
    assert code == 2 and "run the command in process 0's pod (127.0.0.1:" in err, err
    code, _, err = savepoint_create(0)
    assert code == 0, err
    (manual,) = list_savepoints(store, "sup")
    assert manual.name == "manual" and sorted(e.index for e in manual.partitions) == [0, 1, 2, 3]
    for p in pods:
        p.send_signal(signal.SIGTERM)
    errs = []
    for p in pods:
        code, _, err = ws.finish(p, timeout=120)
        assert code == 0, err
        errs.append(err)
    (sp,) = [m for m in list_savepoints(store, "sup") if m.id != manual.id]  # taken once
    assert sp.name.startswith("cancel-") and sorted(e.index for e in sp.partitions) == [0, 1, 2, 3]
    assert "answered process 0's savepoint" in errs[1]
    assert _status(tmp_path, 0)["savepoint"] == sp.id and _status(tmp_path, 1).get("savepoint") is None

    old = pending_request(store, "sup")
    assert old is not None and old.processes == 2
    addrs3, cfgs3 = _pods(ws, tmp_path, n=3, tag="new", source={"tail": False})
    pods = [ws.start("--process-id", str(k), "--addresses", addrs3, "--restore", f"savepoint:{sp.id}",
                     config=cfgs3[k]) for k in range(3)]
    errs = []
    for p in pods:
        code, out, err = ws.finish(p, timeout=180)
        assert code == 0, err
        errs.append(out + err)
    assert all(f"restore: savepoint {sp.id}" in err for err in errs)
    assert all("answered process 0's checkpoint" in err for err in errs[1:])
    # the old 2-process cluster's last request is still in the store: not theirs to answer
    # (one of the new cluster's own checkpoints may time out on a loaded machine while a
    # pod is still restoring; that is a failed checkpoint, counted, not this)
    # (its id is the cancel savepoint's, which every pod names once: as what it restores)
    assert old.id == sp.id
    answered_old = [line for err in errs for line in err.splitlines()
                    if old.id in line and not line.startswith(f"restore: savepoint {sp.id}")]
    assert answered_old == [], answered_old
    failed = [line for err in errs for line in err.splitlines() if "cluster snapshot: process" in line]
    assert all("(down or slow); nothing published" in line for line in failed), failed
    final = list_checkpoints(store, "sup")[0]
    assert {e.object.split("/")[3] for e in final.partitions} == {"proc-0", "proc-1", "proc-2"}
    assert_exactly_once(read_rows(ws.output), 200)


def test_a_pod_that_is_down_fails_the_cluster_checkpoint(tmp_path: Path) -> None:
    """Process 1 never starts: every checkpoint process 0 coordinates times out, is counted
    as failed, and nothing is published (never a partial checkpoint)."""
    ws = Workspace(tmp_path, n=50)
    store = open_store(ws.store_url)
    addrs, cfgs = _pods(ws, tmp_path, checkpoints={"timeout": "2s", "interval": "1s"},
                        savepoints={"on-cancel": False})
    p0 = ws.start("--process-id", "0", "--addresses", addrs, config=cfgs[0])
    wait_for(lambda: (_status(tmp_path, 0).get("checkpoint_failures") or 0) >= 1,
             what="a failed cluster checkpoint", timeout=60)
    assert list_checkpoints(store, "sup") == []
    code, _, err = ws.stop(p0)
    assert code == 0, err
    assert "no front report from process(es) [1] (down or slow)" in err


def test_kill_9_of_a_pod_supervisor_during_a_cluster_checkpoint(tmp_path: Path) -> None:
    """Process 1's supervisor is SIGKILLed right after it uploaded its share of a checkpoint,
    before its part record: that checkpoint fails (process 0 counts it) and is never
    published; restarted, process 1 answers again, and the input ends exactly once."""
    ws = Workspace(tmp_path, n=200)
    store = open_store(ws.store_url)
    addrs, cfgs = _pods(ws, tmp_path, checkpoints={"timeout": "5s", "interval": "1s"})
    mark = tmp_path / "fault-mark"
    p0 = ws.start("--process-id", "0", "--addresses", addrs, config=cfgs[0])
    p1 = ws.start("--process-id", "1", "--addresses", addrs, config=cfgs[1],
                  env={"STREAMFORGE_FAULT_POINT": "checkpoint.upload", "STREAMFORGE_FAULT_MARK": str(mark)})
    assert wait_for(lambda: p1.poll() is not None, what="process 1's supervisor killed", timeout=90)
    assert p1.returncode == -signal.SIGKILL and mark.read_text().startswith("checkpoint.upload ")
    wait_for(lambda: (_status(tmp_path, 0).get("checkpoint_failures") or 0) >= 1,
             what="process 0 to count the failed checkpoint", timeout=60)
    assert all(len(m.partitions) == 4 for m in list_checkpoints(store, "sup"))
    before = {m.id for m in list_checkpoints(store, "sup")}
    p1 = ws.start("--process-id", "1", "--addresses", addrs, config=cfgs[1])
    wait_for(lambda: {m.id for m in list_checkpoints(store, "sup")} - before,
             what="a cluster checkpoint after the restart", timeout=90)
    for p in (p0, p1):
        p.send_signal(signal.SIGTERM)
    for p in (p0, p1):
        code, _, err = ws.finish(p, timeout=120)
        assert code == 0, err
    (sp,) = list_savepoints(store, "sup")
    single = ws.config("single.yaml", source={"tail": False},
                       recovery={"dir": str(tmp_path / "single" / "recovery")})
    code, _, err = ws.finish(ws.start("--restore", f"savepoint:{sp.id}", config=single), timeout=120)
    assert code == 0, err
    assert_exactly_once(read_rows(ws.output), 200)
