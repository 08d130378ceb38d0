"""The supervisor's dataflow child gets `$BYTEWAX_SNAPSHOT_INTERVAL` with its `-s` value:
Bytewax's own variable for that flag (the flag wins, so Bytewax sees no difference), read by
the sources' EpochPacer to park from the first epoch boundary instead of spinning through
the two it would need to learn the interval (`dataflows.flow.pacing.configured_interval`)."""

from __future__ import annotations

from pathlib import Path

from dataflows.flow.pacing import INTERVAL_ENV, configured_interval
from tests.supervisor_harness import Workspace


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def _argv(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_the_child_gets_its_snapshot_interval_in_bytewax_s_variable(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, n=50)
    proc = ws.start(config=ws.config(recovery={"snapshot-interval": "3s"}),
                    env={INTERVAL_ENV: "7"})  # the supervisor's own environment does not leak
    try:
        pid = ws.running(proc)["child_pid"]
        argv, env = _argv(pid), _environ(pid)
    finally:
        code, _, err = ws.stop(proc)
    assert code == 0, err
    assert argv[argv.index("-s") + 1] == "3"
    assert env[INTERVAL_ENV] == "3" and configured_interval(env) == 3.0
