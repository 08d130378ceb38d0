"""The supervised Bytewax process: `python -m bytewax.run FLOW -r DIR -s S -b B [-w N]`.

The child gets `STREAMFORGE_CONFIG` (absolute path of the pipeline config) in
its environment, runs in its own session (a terminal's Ctrl-C goes to the
supervisor, which then stops the child in order), dies with the supervisor
(Linux parent-death signal), and is
stopped gracefully with SIGINT (Bytewax aborts the dataflow at the next
activation; state is already in the recovery partitions as of the last
epoch), then SIGKILL after a grace period.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["Child", "bytewax_argv", "child_env"]

_PR_SET_PDEATHSIG = 1


def bytewax_argv(
    flow: str, recovery_dir: Path, *, snapshot_s: float, backup_s: float, workers: int
) -> list[str]:
    """The child's command line (`-s`/`-b` are whole seconds for `bytewax.run`)."""
    argv = [
        sys.executable,
        "-m",
        "bytewax.run",
        flow,
        "-r",
        str(recovery_dir),
        "-s",
        str(max(1, round(snapshot_s))),
        "-b",
        str(max(0, round(backup_s))),
    ]
    if workers > 1:
        argv += ["-w", str(workers)]
    return argv


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class Child:
    """One Bytewax process at a time; `start` again after it exited."""

    def __init__(self, argv: list[str], env: Mapping[str, str]) -> None:
        self.argv = argv
        self.env = dict(env)
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    def start(self) -> int:
        self._proc = subprocess.Popen(
            self.argv,
            env=self.env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
        )
        self.started_at = time.monotonic()
        return self._proc.pid

    def poll(self) -> int | None:
        """Exit code (negative = killed by that signal) or None while it runs."""
        return self._proc.poll() if self._proc else None

    def stop(self, grace_s: float) -> int | None:
        """SIGINT, wait up to `grace_s`, then SIGKILL; returns the exit code."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def child_env(config_path: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The supervisor's environment plus STREAMFORGE_CONFIG and the cwd on PYTHONPATH."""
    env = dict(os.environ)
    env.update(extra or {})
    env["STREAMFORGE_CONFIG"] = str(config_path)
    paths = [os.getcwd(), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env
