"""The supervised Bytewax process: `python -m bytewax.run FLOW -r DIR -s S -b B [-w N]`.

FLOW is wrapped as `streamforge_ops.child:load_flow('<pipeline.flow>')` (Bytewax's
import string accepts a call with literal arguments): `load_flow` builds the flow
exactly as `bytewax.run` would, but a configuration error (a `ConfigError`, or a
`pipeline.flow` that cannot be imported) prints one line and exits with
`EXIT_CONFIG` (2) instead of a traceback and 1. A service that is unreachable
while the flow is built (Kafka brokers not answering metadata) is not a config
error: it stays a crash (exit 1) and is restarted with backoff. `preflight` runs
the same build in a subprocess before the first start: exit 2 there fails
`streamforge run` at once; the supervisor also reads exit code 2 of the first
child as "can never start" (a child that ran before and exits 2 later is a crash,
restarted within `recovery.max-restarts`). (In a subprocess, not in the supervisor: Bytewax links its own SQLite, and
two SQLite copies in one process break each other's locks while checkpoints copy
the partitions.)

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["EXIT_CONFIG", "Child", "bytewax_argv", "child_env", "load_flow", "preflight"]

_PR_SET_PDEATHSIG = 1
EXIT_CONFIG = 2  # the child could not build its flow from the config: restarting cannot help
CONFIG_ERROR_PREFIX = "streamforge: cannot start:"


def _entry(flow: str) -> str:
    return f"streamforge_ops.child:load_flow({flow!r})"


def load_flow(flow: str) -> Any:
    """Build the Dataflow named by `flow` (`module:attr` or `module:factory(...)`) the way
    `bytewax.run` does; on a configuration error print one line and exit `EXIT_CONFIG`."""
    from bytewax.run import _locate_dataflow, _prepare_import

    from dataflows.config import ConfigError

    _exit_2_on_config_error_at_run()
    try:
        return _locate_dataflow(*_prepare_import(flow))
    except ConfigError as exc:
        if _unreachable(exc):
            raise  # transient: a crash, restarted with backoff
        message = str(exc)
    except (ImportError, AttributeError, SyntaxError) as exc:
        message = f"pipeline.flow: cannot load {flow!r}: {type(exc).__name__}: {exc}"
    print(f"{CONFIG_ERROR_PREFIX} {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_CONFIG)


def _config_error_in(exc: BaseException | None) -> Exception | None:
    """The first `ConfigError` in an exception's cause / context chain (Bytewax wraps an error
    raised in a partition's build in a `BytewaxRuntimeError` whose `__cause__` it is)."""
    from dataflows.config import ConfigError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConfigError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _exit_2_on_config_error_at_run() -> None:
    """A `ConfigError` raised once the run has started (a sink or source refusing its resume
    state in `build_part`, such as a changed output partition count) exits `EXIT_CONFIG` with
    its one-line reason, like one raised while the flow is built; anything else keeps
    Python's traceback and exit 1 (a crash)."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        found = _config_error_in(value)
        if found is None or _unreachable(found):
            previous(kind, value, tb)
            return
        print(f"{CONFIG_ERROR_PREFIX} {found}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(EXIT_CONFIG)  # from an excepthook, sys.exit cannot change the exit code

    sys.excepthook = hook


_UNREACHABLE = "did not answer metadata"  # dataflows.connectors.kafka.common.check_cluster


def _unreachable(exc: Exception) -> bool:
    """Kafka brokers that did not answer while the flow was built: the cluster may come back,
    the config may be right. (Recognised by check_cluster's message: dataflows.pipelines.io
    re-raises it as a plain ConfigError prefixed with the section name.)"""
    return _UNREACHABLE in str(exc)


def preflight(flow: str, env: Mapping[str, str], timeout_s: float) -> tuple[int, str]:
    """Build the flow once in a subprocess with the child's environment: (0, "") if it builds,
    else its exit code (`EXIT_CONFIG`: a config error) and the reason (the config error, or
    the last line of the traceback)."""
    code = f"from streamforge_ops.child import load_flow; load_flow({flow!r})"
    try:
        done = subprocess.run([sys.executable, "-c", code], env=dict(env), capture_output=True,
                              text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return 1, f"building the flow {flow} took longer than {timeout_s:.0f}s"
    if done.returncode == 0:
        return 0, ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit code {done.returncode}"
    return done.returncode, last.removeprefix(CONFIG_ERROR_PREFIX).strip()


def bytewax_argv(
    flow: str, recovery_dir: Path, *, snapshot_s: float, backup_s: float, workers: int
) -> list[str]:
    """The child's command line (`-s`/`-b` are whole seconds for `bytewax.run`)."""
    argv = [
        sys.executable,
        "-m",
        "bytewax.run",
        _entry(flow),
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


def _die_with(parent: int) -> Callable[[], None]:
    """preexec_fn: SIGKILL this child when `parent` dies (Linux PR_SET_PDEATHSIG); if the
    parent already died between fork and prctl, exit at once instead of running orphaned."""

    def arm() -> None:  # pragma: no cover - runs in the forked child
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            return
        if os.getppid() != parent:
            os._exit(1)

    return arm


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
            preexec_fn=_die_with(os.getpid()) if sys.platform == "linux" else None,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
        )
        self.started_at = time.monotonic()
        return self._proc.pid

    def poll(self) -> int | None:
        """Exit code (negative = killed by that signal) or None while it runs."""
        return self._proc.poll() if self._proc else None

    def interrupt(self) -> None:
        """SIGINT if it runs (Bytewax aborts the dataflow at the next activation)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)

    def stop(self, grace_s: float) -> int | None:
        """SIGINT, wait up to `grace_s`, then SIGKILL; returns the exit code."""
        self.interrupt()
        return self.wait_or_kill(grace_s)

    def wait_or_kill(self, grace_s: float) -> int | None:
        """Wait up to `grace_s` for the exit, then SIGKILL; returns the exit code."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
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
