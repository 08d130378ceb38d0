"""What the supervisor of a Bytewax cluster says when one of its processes fails.

Bytewax 0.21.1 in cluster mode loses a worker's own error: `cluster_main` (src/run.rs) puts
the worker's PyErr in a channel from its panic hook, then dropping the communication guards
panics ("Send thread panic") and that PanicException is what `python -m bytewax.run` raises,
in the failing process and in its peers alike. Real processes: the CLI, Bytewax's cluster
mode over loopback; the source of tests/supervised_flow.py raises in `build_part`
(`source.crash`), i.e. in the one process whose worker got its only partition.
"""

from __future__ import annotations

import re
from pathlib import Path

from streamforge_ops.cluster import _explained
from streamforge_ops.cluster_child import BytewaxRuntimeError, error_line
from tests.supervisor_harness import Workspace, wait_for


def test_a_failing_process_is_logged_with_its_own_error_not_the_peers_panic(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, n=20)
    cfg = ws.config(source={"crash": True}, checkpoints={"interval": "1h"})
    proc = ws.start("--processes", "2", config=cfg)
    def restarting() -> str | None:
        err = ws.stderr(proc)
        return err if "restarting in" in err else None

    try:
        err = wait_for(restarting, timeout=90, what="the supervisor to restart the crashed cluster")
    finally:
        proc.kill()  # its children die with it (parent-death signal)
        proc.wait()
    failed = re.findall(r"^streamforge: process (\d) of 2 failed: (.*)$", err, re.M)
    assert len(failed) == 1, err
    k, line = failed[0]
    assert line.startswith("RuntimeError: source.crash: crashing as configured"), line
    assert "build_part" in line, "the Bytewax context of the error (which call failed) is kept"
    assert err.index("failed: RuntimeError") < err.index("dataflow exited with 1")


def test_error_line_is_the_users_error_then_what_bytewax_was_calling() -> None:
    try:
        try:
            raise ValueError("bad record\nsecond line")
        except ValueError as exc:
            raise BytewaxRuntimeError('(src/outputs.rs:10:5): error calling `write_batch` in step "s"') from exc
    except BytewaxRuntimeError as exc:
        assert error_line(exc) == 'ValueError: bad record (error calling `write_batch` in step "s")'
    assert error_line(KeyError()) == "KeyError"


def test_a_pod_whose_process_only_saw_the_peer_panic_says_so() -> None:
    """A pod runs one process: when another pod's process failed, its own only panicked."""
    line = "PanicException: Send thread panic: Any { .. }"
    assert _explained(line) == f"{line} (its connection to a peer broke: the process that failed runs elsewhere)"
    assert _explained("RuntimeError: boom") == "RuntimeError: boom"
