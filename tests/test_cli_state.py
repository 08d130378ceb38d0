"""The state commands on real recovery partitions and a file:// store:
checkpoint create/list, savepoint create/list/describe/restore/delete/prune,
restore, state inspect/compact/migrate. The partitions come from running the
test flow in-process with Bytewax recovery."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from recovery.migrate import clear_migrations, register_migration
from streamforge_ops.cli import main
from streamforge_ops.job import load_job
from streamforge_ops.restoring import parse_target, prepare
from tests.state_fixture import run_version_1
from tests.supervised_flow import Totals
from tests.supervisor_harness import Workspace, cli


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config whose recovery dir holds the state of one complete run (7 users)."""
    ws = Workspace(tmp_path, n=50)
    cfg = ws.config()
    monkeypatch.setenv("STREAMFORGE_CONFIG", str(cfg))
    run_version_1(cfg, ws.recovery)
    return cfg


def totals_keys(report: dict[str, Any]) -> int:
    """Live keys of the `totals` stateful step (Bytewax nests its step id)."""
    return sum(v["keys"] for k, v in report["steps"].items() if k.startswith("supervised.totals"))


def test_checkpoint_savepoint_restore_inspect(job: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = cli(capsys, "checkpoint", "create")
    assert ck["kind"] == "checkpoint" and ck["partition_count"] == 4
    assert [c["id"] for c in cli(capsys, "checkpoint", "list")] == [ck["id"]]

    sp = cli(capsys, "savepoint", "create", "--name", "before-v2")
    assert sp["name"] == "before-v2"
    assert cli(capsys, "savepoint", "describe", "before-v2")["id"] == sp["id"]
    assert "no savepoint 'nope'" in cli(capsys, "savepoint", "describe", "nope", code=2)

    local = cli(capsys, "state", "inspect")
    assert totals_keys(local) == 7
    remote = cli(capsys, "state", "inspect", "--checkpoint", ck["id"])
    assert remote["source"] == f"checkpoint:{ck['id']}"
    assert totals_keys(remote) == 7
    assert totals_keys(cli(capsys, "state", "inspect", "--savepoint", sp["id"])) == 7
    assert cli(capsys, "state", "compact")["rows_removed"] >= 0

    restored = cli(capsys, "restore", "checkpoint", ck["id"])
    assert (restored["chosen"], restored["id"]) == ("checkpoint", ck["id"])
    assert cli(capsys, "restore", "--strict")["chosen"] == "checkpoint"
    assert cli(capsys, "savepoint", "restore", sp["id"])["chosen"] == "savepoint"
    assert totals_keys(cli(capsys, "state", "inspect")) == 7

    sp2 = cli(capsys, "savepoint", "create")
    assert [s["id"] for s in cli(capsys, "savepoint", "list")] == [sp2["id"], sp["id"]]
    assert cli(capsys, "savepoint", "prune", "--max-count", "1")["deleted"] == [sp["id"]]
    assert cli(capsys, "savepoint", "prune", "--max-age", "0s")["deleted"] == [], "keeps one"
    assert cli(capsys, "savepoint", "delete", sp2["id"])["deleted"] == sp2["id"]
    assert cli(capsys, "savepoint", "list") == []


def test_restore_refused_while_supervisor_runs(job: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (job.parent / "supervisor.pid").write_text(f"{os.getpid()}\n")
    err = cli(capsys, "restore", code=2)
    assert f"runs (pid {os.getpid()})" in err and "--force" in err


def test_state_migrate(job: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A registered migration rewrites every Totals row once; a second run finds nothing."""

    def to_v2(old: Totals) -> dict[str, int]:
        return {"version": 2, "count": old.count, "total": old.total}

    register_migration("supervised.totals", 1, 2, to_v2)
    try:
        assert cli(capsys, "state", "migrate")["migrated"] == 7
        assert cli(capsys, "state", "migrate")["migrated"] == 0
    finally:
        clear_migrations()


def test_second_supervisor_refused_and_no_restore_keeps_local(
    job: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pid file guards against two supervisors on one recovery dir; --no-restore
    resumes the local partitions without consulting the store."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (job.parent / "supervisor.pid").write_text(f"{other.pid}\n")
        assert main(["run", "--config", str(job)]) == 2
        assert f"already runs (pid {other.pid})" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()
    never = load_job(str(job), store=f"file://{job.parent}/no-store")
    decision = prepare(never, None, no_restore=True)
    assert (decision.chosen, decision.id) == ("local", None)
    assert not (job.parent / "no-store").exists(), "the store was not consulted"
    assert parse_target("checkpoint:ck-1") == ("checkpoint", "ck-1")
    assert parse_target("savepoint sp-1") == ("savepoint", "sp-1")
