"""`streamforge upgrade` of a local cluster (`run --processes N`): one stop savepoint, the
new version on another process count (rescale 2 -> 3 through that savepoint)."""

from __future__ import annotations

from pathlib import Path

from recovery.savepoint import list_savepoints
from recovery.store import open_store
from tests.supervisor_harness import Workspace, assert_exactly_once, read_rows, wait_for


def test_upgrade_a_2_process_cluster_onto_3_processes_through_one_savepoint(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, n=300)
    old = ws.start("--processes", "2", config=ws.config(source={"tail": True, "delay": 0.05}))
    ws.running(old)
    wait_for(lambda: len(read_rows(ws.output)) >= 40, what="output from the 2-process cluster", timeout=60)
    new = ws.config("new.yaml", source={"tail": False}, pipeline={"code-version": "2"})
    code, out, err = ws.finish(ws.start("--mode", "savepoint", "--skip-verify", "--processes", "3",
                                        config=new, command="upgrade"), timeout=180)
    assert code == 0, err
    assert old.wait(30) == 0
    (sp,) = list_savepoints(open_store(ws.store_url), "sup")  # taken once: the old one's SIGTERM
    assert sp.name.startswith("cancel-")
    assert f"using the stop savepoint {sp.id}" in err
    assert "as process(es) [0, 1, 2] of 3" in err
    assert_exactly_once(read_rows(ws.output), 300)


def test_upgrade_keeps_the_running_process_count_by_default(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, n=100)
    old = ws.start("--processes", "2", config=ws.config(source={"tail": True, "delay": 0.05}))
    ws.running(old)
    new = ws.config("new.yaml", source={"tail": False})
    code, _, err = ws.finish(ws.start("--mode", "last-state", "--skip-verify", config=new,
                                      command="upgrade"), timeout=180)
    assert code == 0, err
    assert "as process(es) [0, 1] of 2" in err
    assert_exactly_once(read_rows(ws.output), 100)
