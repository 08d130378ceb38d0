"""`streamforge upgrade` runs `savepoint verify` with the new config before it stops the old
version: a new version that cannot take over the state (here: its stateful step was renamed
without a `state.step-renames` mapping) is refused and version 1 keeps running."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.supervisor_harness import Workspace, read_rows, wait_for


def test_upgrade_refused_when_the_new_version_fails_verification(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, n=100)
    v1 = ws.config("v1.yaml", source={"tail": True, "delay": 0.05})
    v2 = ws.config("v2.yaml", pipeline={"flow": "tests.step_rename_flow:flow_renamed", "code-version": "2"},
                   source={"tail": False})
    old = ws.start(config=v1)
    ws.running(old)
    # durable progress: the probe savepoint then holds the state of `totals`
    wait_for(lambda: len(read_rows(ws.output)) >= 10 and ws.status().get("checkpoints", 0) >= 2,
             what="version 1 output and a checkpoint")

    code, _, err = ws.finish(ws.start("--mode", "savepoint", config=v2, command="upgrade"))
    assert code == 2, err
    assert "cannot take over the state" in err and "supervised.totals" in err, err
    assert old.poll() is None, "the old version is left running"

    old.send_signal(signal.SIGTERM)
    assert ws.finish(old)[0] == 0
