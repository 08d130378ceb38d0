"""One complete run of the test pipeline (tests/supervised_flow.py, version 1) with Bytewax
recovery, in-process: the recovery partitions the state-command tests start from."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main

from dataflows.config import load_config
from recovery.partitions import init_partitions
from tests.supervised_flow import build


def run_version_1(config: Path, recovery_dir: Path, partitions: int = 4) -> None:
    """Run version 1 over its whole input into `recovery_dir` (created with `partitions`)."""
    init_partitions(recovery_dir, partitions)
    run_main(build(load_config(config), version=1), epoch_interval=timedelta(seconds=0),
             recovery_config=RecoveryConfig(str(recovery_dir)))
