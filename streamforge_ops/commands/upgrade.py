"""`streamforge upgrade --mode stateless|last-state|savepoint --config NEW`: redeploy a pipeline.

The seed's `upgradeMode`:

- `savepoint`: stop the running job, then start the new version restored from
  the savepoint taken AFTER its dataflow stopped: the one its supervisor takes
  on SIGTERM (`savepoints.on-cancel`), else one taken here of the stopped
  job's partitions. (A savepoint taken while the old version still runs is
  stale: the old version goes on committing after it, and the new one would
  produce that stretch again; such a savepoint is only the probe that
  `savepoint verify` checks the new config against before the stop.) If the
  stop savepoint fails, the old version stays stopped; its state is in its
  partitions and checkpoints (`streamforge run` resumes it).
- `last-state`: stop the job, then use the latest checkpoint if it is younger
  than `--max-checkpoint-age`, else a savepoint of the stopped job's partitions.
- `stateless`: stop the job and start the new version from scratch.

The running supervisor is found by its pid file next to the recovery
directory of NEW (or `--pid`); it gets SIGTERM and is waited for. The new
version then runs in the foreground, exactly like `streamforge run`.

A local cluster (`streamforge run --processes N`) is one supervisor holding every
partition: its stop savepoint is the cluster's, taken once. The new version runs
as `--processes M` (default: the old one's process count, from its status), M may
differ from N (rescale through the savepoint). Pods of a StatefulSet are upgraded
by Kubernetes instead (deploy/waxctl.md, `streamforge_ops.deploy_render`).
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

from dataflows.config import parse_duration
from recovery.lease import pid_alive
from streamforge_ops import snapshots
from streamforge_ops.cli import CliError
from streamforge_ops.cluster import cluster_from_args
from streamforge_ops.job import Job, add_config_arg, load_job, read_status, supervisor_pid
from streamforge_ops.output import progress
from streamforge_ops.restore_steps import add_allow_arg, allowing
from streamforge_ops.restoring import Target
from streamforge_ops.supervisor import RunOptions, Supervisor
from streamforge_ops.verify import verify_before_upgrade

MODES = ("stateless", "last-state", "savepoint")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upgrade", help="savepoint, stop the running job, start the new version",
                       description=__doc__.split("\n", 1)[1].strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", required=True, choices=MODES, help="how state crosses the upgrade")
    add_config_arg(p)
    p.add_argument("--max-checkpoint-age", default="5m",
                   help="last-state: newest checkpoint must be younger than this (default 5m)")
    p.add_argument("--pid", type=int, help="pid of the running supervisor (default: its pid file)")
    p.add_argument("--stop-timeout", default="120s", help="how long to wait for the old job to stop")
    p.add_argument("--workers", "-w", type=int, help="worker count of the new version")
    p.add_argument("--processes", type=int, metavar="M",
                   help="run the new version as a local cluster of M processes (default: as many "
                        "as the running one)")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.add_argument("--skip-verify", action="store_true",
                   help="do not run `savepoint verify` with the new config before stopping the old version")
    add_allow_arg(p)
    p.set_defaults(func=_run)


def _duration(text: str, flag: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}") from None


def _run(args: argparse.Namespace) -> int:
    max_age = _duration(args.max_checkpoint_age, "--max-checkpoint-age")
    stop_timeout = _duration(args.stop_timeout, "--stop-timeout")
    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers must be >= 1, got {args.workers}")
    if not args.config and not os.environ.get("STREAMFORGE_CONFIG"):
        raise CliError("upgrade needs --config NEW_CONFIG")
    job = allowing(load_job(args.config), args)
    old = args.pid if args.pid is not None else supervisor_pid(job)
    cluster = cluster_from_args(args.processes or _old_processes(job, old), None, None)
    target: Target | None = None
    if args.mode == "savepoint":  # refuse before stopping anything
        _require_partitions(job)
    if args.mode != "stateless" and not args.skip_verify:  # the old version runs until it passes
        verify_before_upgrade(job, _savepoint(job)[1])  # a probe: verified, never restored
    if old is not None:
        _stop(old, job, stop_timeout)
    if args.mode == "savepoint":  # after the stop: the old version commits nothing after it
        target = _stop_savepoint(job, old)
    if args.mode == "last-state":  # chosen after the stop: cancellation may delete checkpoints
        target = _recent_checkpoint(job, max_age) or _savepoint(job)
    progress(f"starting {job.pipeline} ({job.settings.flow}, code-version {job.settings.code_version or '-'})")
    opts = RunOptions(workers=args.workers, target=target, strict=target is not None,
                      fresh=args.mode == "stateless", json=args.json, cluster=cluster)
    return Supervisor(job, opts).run()


def _old_processes(job: Job, old: int | None) -> int | None:
    """The running supervisor's process count (its status), None if unknown."""
    status = read_status(job)
    n = status.get("processes") if old is not None and status.get("pid") == old else None
    return n if isinstance(n, int) and n >= 1 else None


def _recent_checkpoint(job: Job, max_age: float) -> Target | None:
    from recovery.checkpoint import list_checkpoints

    found = list_checkpoints(job.checkpoint_store, job.pipeline)
    if not found:
        progress("last-state: no checkpoint; falling back to a savepoint")
        return None
    newest = found[0]
    age = (datetime.now(UTC) - _parse_time(newest.created_at)).total_seconds()
    if age > max_age:
        progress(f"last-state: newest checkpoint {newest.id} is {age:.0f}s old (> {max_age:.0f}s); "
                 "falling back to a savepoint")
        return None
    progress(f"last-state: using checkpoint {newest.id} ({age:.0f}s old)")
    return ("checkpoint", newest.id)


def _parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _require_partitions(job: Job) -> None:
    if not any(Path(job.recovery_dir).glob("part-*.sqlite3")):
        raise CliError(f"no recovery partitions in {job.recovery_dir} to take a savepoint of")


def _stop_savepoint(job: Job, old: int | None) -> Target:
    """The savepoint the stopped supervisor `old` took after its dataflow stopped, if it
    did; else a savepoint of the (now quiescent) partitions."""
    status = read_status(job)
    if old is not None and status.get("pid") == old and status.get("phase") == "cancelled" \
            and status.get("savepoint"):
        progress(f"using the stop savepoint {status['savepoint']} (taken after the old dataflow stopped)")
        return ("savepoint", str(status["savepoint"]))
    return _savepoint(job)


def _savepoint(job: Job) -> Target:
    _require_partitions(job)
    progress(f"taking upgrade savepoint of {job.recovery_dir} ...")
    out = snapshots.take(job, "savepoint", name=f"upgrade-to-{job.settings.code_version or 'new'}",
                         log=progress)
    if not out.ok:
        raise CliError(f"upgrade savepoint failed: {out.error}; if the old version was stopped, its "
                       f"state is in {job.recovery_dir} and its checkpoints (`streamforge run` resumes it)")
    return ("savepoint", out.manifest.id)


def _stop(pid: int, job: Job, timeout: float) -> None:
    progress(f"stopping the running supervisor (pid {pid}) with SIGTERM ...")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and job.pid_file.exists():
        if time.monotonic() > deadline:
            raise CliError(f"supervisor pid {pid} did not stop within {timeout:.0f}s")
        time.sleep(0.1)
    while pid_alive(pid) and time.monotonic() < deadline:  # pid file gone: it is in its last steps
        time.sleep(0.1)
    progress(f"supervisor pid {pid} stopped")
