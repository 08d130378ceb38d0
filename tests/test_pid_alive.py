"""`recovery.lease.pid_alive`: the one liveness check of a local process (leases, the supervisor's
pid file, `upgrade` waiting for the old version, the cluster's stale error files)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from recovery.lease import pid_alive


def test_a_running_process_is_alive_an_exited_one_is_not_even_before_it_is_reaped() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        # not reaped yet (no wait()): a zombie until then, which os.kill(pid, 0) still finds
        while pid_alive(child.pid):
            assert time.monotonic() < deadline, "an exited, unreaped child still counts as alive"
            time.sleep(0.02)
        os.kill(child.pid, 0)  # the zombie is still there: only its state says it exited
    finally:
        child.wait(10)
    assert not pid_alive(child.pid)
