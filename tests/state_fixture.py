"""One complete run of the test pipeline (tests/supervised_flow.py, version 1) with Bytewax
recovery, in-process: the recovery partitions the state-command tests start from."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main

from dataflows.config import load_config
from recovery.partitions import init_partitions
from tests.supervised_flow import build
from tests.supervisor_harness import Workspace


def run_version_1(config: Path, recovery_dir: Path, partitions: int = 4) -> None:
    """Run version 1 over its whole input into `recovery_dir` (created with `partitions`)."""
    init_partitions(recovery_dir, partitions)
    run_main(build(load_config(config), version=1), epoch_interval=timedelta(seconds=0),
             recovery_config=RecoveryConfig(str(recovery_dir)))


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A Workspace whose version 1 ran over 50 records (7 users); its state is in ws.recovery
    and its config is STREAMFORGE_CONFIG. (A plugin in tests/conftest.py: every test module can ask for it.)"""
    ws = Workspace(tmp_path, n=50)
    cfg = ws.config()
    monkeypatch.setenv("STREAMFORGE_CONFIG", str(cfg))
    run_version_1(cfg, ws.recovery)
    return ws
