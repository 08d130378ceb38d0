"""The supervisor behind `streamforge run`: what Bytewax lacks around one dataflow.

0. Preflight: build the flow once in a subprocess (`child.preflight`); a config
   error (or a flow that cannot be imported) fails `run` with the message and
   exit 2 before anything starts.
1. Restore: bring the recovery directory to its starting state
   (`restoring.prepare`: explicit target, else local progress, else the
   checkpoint -> savepoint -> fresh chain) and say what was chosen and why.
2. Run `python -m bytewax.run FLOW -r DIR -s S -b B [-w N]` as a child.
3. Every `checkpoints.interval` (respecting `min-pause`, one at a time, with
   `timeout`), take a checkpoint in a background thread and apply retention;
   every `recovery.compact-interval`, compact the partitions. A failure is
   logged and counted; the flow goes on and the next interval tries again.
4. Child crashed (exit != 0): count `streamforge_restarts_total`, wait an
   exponential backoff, start it again on the same partitions; give up (exit 1)
   when `recovery.max-restarts` restarts happened within `recovery.restart-window`.
   The first child exiting 2 (`child.EXIT_CONFIG`: its flow cannot be built
   from the config) can never start: no restart, exit 2. (One that exits 2
   after a restart ran before: a crash like any other.)
5. Child exited 0 (bounded input done): final checkpoint, summary, exit 0.
6. SIGTERM / SIGINT: stop the child (SIGINT, then SIGKILL after
   `recovery.stop-grace`), wait for an in-flight checkpoint at most what is left
   of its `checkpoints.timeout`, take a savepoint if `savepoints.on-cancel`
   (given up after `savepoints.timeout`: exit 1, every checkpoint kept), apply
   `checkpoints.externalized-retention`, summary, exit 0.
7. Serve `/metrics`, `/healthz`, `/readyz` (`health.py`) on `metrics.port`.
8. A cluster (`RunOptions.cluster`, `streamforge_ops.cluster`): the children are the
   cluster's local processes, started, crashed, restarted and stopped as one group.
   All processes here (`--processes N`): restore as above, then each process's
   `<recovery.dir>/proc-K` links to its partitions; checkpoints are unchanged. One
   process of a pod cluster (`--process-id K --addresses ...`): its own partitions in
   `proc-K` (restored from the store, its share of any process count, when it holds
   none: `cluster_state.restore_share`; fresh ones created), its peers probed for
   `/healthz`; process 0 takes the cluster's checkpoints, final checkpoint and cancel
   savepoint (`cluster_state.take`, `recovery.cluster_checkpoint`) and every other
   process answers them (`cluster_state.Follower`), waiting on its own stop for process
   0's final checkpoint / cancel savepoint: one snapshot, taken once.

The pid goes to `<recovery dir's parent>/supervisor.pid` and a status record
(pid, child pid, port, phase, restore decision) to `supervisor.json` next to
it, so `streamforge upgrade` and tests can find the running job. Checkpoints,
compactions and the cancel savepoint run in daemon threads: one stuck in I/O is
abandoned after its timeout and never keeps the process from exiting.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from dataflows import metrics
from dataflows.flow.pacing import INTERVAL_ENV
from recovery.checkpoint import await_cache, default_cache_dir
from recovery.placement import process_dir
from streamforge_ops import cluster_state, restoring, snapshots
from streamforge_ops.child import EXIT_CONFIG, Child, bytewax_argv, child_env, preflight
from streamforge_ops.cli import CliError
from streamforge_ops.cluster import ChildGroup, Cluster, PeerWatch, link_views, prepare_own_dir
from streamforge_ops.epochs import EpochWatch
from streamforge_ops.health import HealthServer, HealthState
from streamforge_ops.job import Job, supervisor_pid
from streamforge_ops.scheduler import Backoff, CheckpointClock, Every, RestartBudget
from streamforge_ops.summary import run_summary

__all__ = ["RunOptions", "Supervisor"]

_TICK_S = 0.1
_PREFLIGHT_TIMEOUT_S = 120.0




@dataclass
class RunOptions:
    """`streamforge run` flags that change what the supervisor does."""

    workers: int | None = None
    target: restoring.Target | None = None
    strict: bool = False
    fresh: bool = False
    no_restore: bool = False
    json: bool = False
    cluster: Cluster | None = None  # None: one process


@dataclass
class _Tally:
    checkpoints: int = 0
    checkpoint_failures: int = 0
    compactions: int = 0
    rows_compacted: int = 0
    restarts: int = 0
    savepoint: str | None = None
    last_checkpoint: str | None = None
    deleted_on_cancel: list[str] = field(default_factory=list)


class Supervisor:
    """Runs one job until its input ends or it is told to stop."""

    def __init__(self, job: Job, opts: RunOptions, *, log: Callable[[str], None] = snapshots.stderr_log):
        self.job, self.opts, self.log = job, opts, log
        s = job.settings
        self.health = HealthState(
            unhealthy_after=s.metrics.unhealthy_after_intervals * s.checkpoints.interval_s,
            crash_loop_restarts=s.recovery.crash_loop_restarts,
            crash_loop_window=s.recovery.crash_loop_window_s,
        )
        self.tally = _Tally()
        self._stop_signal: int | None = None
        self._wake = threading.Event()
        self._task: Future[Any] | None = None
        self._task_started = 0.0
        self._phase = "starting"
        self._port = 0
        self._status_lock = threading.Lock()
        self.decision: restoring.Decision | None = None
        self.child: Child | ChildGroup | None = None
        self.cluster = opts.cluster
        # every partition in one directory here (one process, or all of a cluster's)
        self.holds_all = self.cluster is None or self.cluster.holds_all
        self.state_dir = job.recovery_dir  # a pod process: its own proc-K (set by _prepare)
        self.share: cluster_state.Share | None = None  # a pod process: its share (cluster_state)
        self.follower: cluster_state.Follower | None = None  # a pod process other than 0
        self.epochs = EpochWatch(job.recovery_dir, job.pipeline)  # epoch close / snapshot write metrics

    # -- lifecycle -----------------------------------------------------------

    def run(self) -> int:
        other = supervisor_pid(self.job)
        if other is not None and other != os.getpid():
            raise CliError(f"a supervisor for {self.job.pipeline!r} already runs (pid {other})")
        code, why = preflight(self.job.settings.flow, child_env(self.job.config_path), _PREFLIGHT_TIMEOUT_S)
        if code == EXIT_CONFIG:
            raise CliError(f"the flow {self.job.settings.flow} cannot start: {why}")
        if code:  # not a config error (a service unreachable, a bug): the restart loop handles it
            self.log(f"building the flow failed ({why}); starting it anyway, restarts use backoff")
        self._install_signals()
        m = self.job.settings.metrics
        try:
            server = HealthServer(self.health, m.host, m.port)
        except OSError as exc:
            raise CliError(f"metrics.port {m.port} on {m.host}: {exc.strerror}; "
                           "set metrics.port: 0 for a random free port") from None
        self._port = server.start().port
        self._out(f"metrics: http://127.0.0.1:{self._port}/metrics (also /healthz, /readyz)")
        self.job.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.job.pid_file.write_text(f"{os.getpid()}\n")
        peers = self._watch_peers()
        try:
            self.decision = self._prepare()
            self._out(self.decision.describe())
            # the checkpoint-age clock starts now: a long restore does not count against /healthz
            self.health.update(restored=True, restore_choice=self.decision.chosen, started_at=time.time())
            return self._loop()
        finally:
            server.stop()
            if peers:
                peers.stop()
            if self.follower:
                self.follower.stop()
            if self.child:
                self.child.stop(self.job.settings.recovery.stop_grace_s)
            self._settle_cache()
            self.job.pid_file.unlink(missing_ok=True)
            self._write_status()

    def _settle_cache(self) -> None:
        """Wait (at most `checkpoints.timeout`) for the checkpoint cache's background work of
        the last checkpoint (its digest, or bringing the copies forward): it dies with this
        process, and the next run's checkpoints would then have no parent to delta onto."""
        await_cache(default_cache_dir(self.job.recovery_dir), self.job.settings.checkpoints.timeout_s)

    def _prepare(self) -> restoring.Decision:
        """The starting state (see the module doc, 1 and 8)."""
        c, count = self.cluster, self.job.settings.recovery.partitions
        if c is not None and not c.holds_all:
            if self.opts.fresh:
                raise CliError("--fresh is not supported for one process of a cluster yet")
            self.share = cluster_state.Share.of(self.job, c.local[0], c.processes)
            restored = None if self.opts.no_restore else cluster_state.restore_share(
                self.job, self.share, self.opts.target, strict=self.opts.strict)
            self.state_dir, what = prepare_own_dir(self.job.recovery_dir, c, count)
            self.epochs = EpochWatch(self.state_dir, self.job.pipeline)
            if not self.share.coordinator:  # process 0 takes the cluster's snapshots; answer them
                self.follower = cluster_state.Follower(self.job, self.share, self.log).start()
            if restored is not None:
                return restored
            chosen = "local" if restoring.has_local_progress(self.state_dir) else "fresh"
            return restoring.Decision(chosen, None, f"process {c.local[0]} of {c.processes}: {what}")
        decision = restoring.prepare(
            self.job, self.opts.target, strict=self.opts.strict,
            fresh=self.opts.fresh, no_restore=self.opts.no_restore,
        )
        if c is not None:
            link_views(self.job.recovery_dir, c, count)
            decision.notes.append(f"{c.processes} processes: <recovery.dir>/proc-K links to process K's "
                                  "partitions (recovery.placement)")
        return decision

    def _watch_peers(self) -> PeerWatch | None:
        """A pod process: probe the other supervisors; report the unreachable ones."""
        if self.cluster is None or self.cluster.holds_all:
            return None

        def report(down: list[str]) -> None:
            self.health.update(peers_unreachable=down)
            self.log(f"cannot reach peer supervisor(s): {', '.join(down)}" if down
                     else "every peer supervisor answers")

        return PeerWatch(self.cluster, self.job.settings.metrics.port, report).start()

    def _install_signals(self) -> None:
        def on_signal(signum: int, _frame: Any) -> None:
            self._stop_signal = signum
            self._wake.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _loop(self) -> int:
        s = self.job.settings
        workers = self.opts.workers or s.workers
        argv = bytewax_argv(
            s.flow, self.job.recovery_dir.absolute(), snapshot_s=s.recovery.snapshot_interval_s,
            backup_s=s.recovery.backup_interval_s, workers=workers,
        )
        self.child = self._children(argv)
        backoff = Backoff(s.recovery.restart_initial_backoff_s, s.recovery.restart_max_backoff_s,
                          s.recovery.restart_multiplier)
        budget = RestartBudget(s.recovery.max_restarts, s.recovery.restart_window_s)
        now = time.monotonic()
        coordinates = self.holds_all or (self.share is not None and self.share.coordinator)
        interval = s.checkpoints.interval_s if coordinates else math.inf  # module doc, 8
        clock = CheckpointClock(interval, s.checkpoints.min_pause_s, last_start=now)
        compaction = Every(s.recovery.compact_interval_s, last=now)
        snapshots.update_savepoint_gauge(self.job)
        if self._stop_signal is None:
            self._start_child(workers)
        while True:
            if self._stop_signal is not None:
                return self._cancel()
            code = self.child.poll()
            if code == 0:
                return self._finish()
            if code == EXIT_CONFIG and self.tally.restarts == 0:
                self.log(f"dataflow cannot start: its flow failed to build from the config (exit {code}; "
                         "see the line above); not restarting")
                return self._fail(EXIT_CONFIG)
            if code is not None:
                if not self._restart(code, backoff, budget):
                    return self._fail(1)
                continue
            self._tend_state(clock, compaction)
            self._wake.wait(_TICK_S)

    def _children(self, argv: list[str]) -> Child | ChildGroup:
        """One child, or the cluster's local processes, each `-r` its own proc-K directory."""
        # Bytewax's own variable for `-s`, with the same value: the sources' EpochPacer reads
        # it to park from the first epoch boundary (dataflows.flow.pacing.configured_interval)
        env = child_env(self.job.config_path, {INTERVAL_ENV: argv[argv.index("-s") + 1]})
        if self.cluster is None:
            return Child(argv, env)
        r = argv.index("-r")

        def argv_for(k: int, cluster: Cluster) -> list[str]:
            pdir = (self.state_dir if not self.holds_all else process_dir(self.job.recovery_dir, k))
            return [*argv[:r + 1], str(pdir.absolute()), *argv[r + 2:], *cluster.bytewax_args(k)]

        return ChildGroup(self.cluster, argv_for, env, self.job.settings.recovery.stop_grace_s)

    def _start_child(self, workers: int) -> None:
        assert self.child is not None
        pid = self.child.start()
        self.health.update(child_pid=pid)
        self._phase = "running"
        if isinstance(self.child, ChildGroup):
            c = self.child.cluster
            self.log(f"started dataflow {self.job.settings.flow} as process(es) {list(c.local)} of "
                     f"{c.processes} (pids {self.child.pids}, {workers} worker(s) each, "
                     f"addresses {';'.join(c.addresses)})")
        else:
            self.log(f"started dataflow {self.job.settings.flow} (pid {pid}, {workers} worker(s))")
        self._write_status()

    def _fail(self, code: int) -> int:
        self._phase = "failed"
        self._report("failed")
        return code

    def _restart(self, code: int, backoff: Backoff, budget: RestartBudget) -> bool:
        """Count the crash, wait the backoff; False if max-restarts within the window is spent."""
        assert self.child is not None
        s = self.job.settings.recovery
        ran_for = time.monotonic() - self.child.started_at
        self.health.update(child_pid=None)
        self._phase = "restarting"
        self._write_status()
        if not budget.allow(time.monotonic()):
            self.log(f"dataflow exited with {code}; max-restarts ({s.max_restarts}) reached within "
                     f"recovery.restart-window ({s.restart_window_s:g}s), giving up")
            return False
        delay = backoff.next_delay(ran_for)
        self.log(f"dataflow exited with {code} after {ran_for:.1f}s; restarting in {delay:.1f}s")
        self._wake.wait(delay)
        if self._stop_signal is not None:
            return True  # the loop sees the signal and cancels
        self.tally.restarts += 1
        metrics.RESTARTS.labels(pipeline=self.job.pipeline).inc()
        self.health.restarted()
        self._start_child(self.opts.workers or self.job.settings.workers)
        return True

    # -- checkpoints and compaction --------------------------------------------

    def _tend_state(self, clock: CheckpointClock, compaction: Every) -> None:
        self.epochs.poll()
        now = time.monotonic()
        if self._task is not None:
            if self._task.done():
                self._task = None
                clock.ended(now)
            elif now - self._task_started > 2 * self.job.settings.checkpoints.timeout_s and clock.in_flight:
                # take_checkpoint enforces the timeout itself; this catches a call stuck in I/O
                self.log("checkpoint stuck for twice checkpoints.timeout; counted as failed")
                metrics.CHECKPOINT_FAILURES.labels(pipeline=self.job.pipeline, kind="checkpoint").inc()
                self.tally.checkpoint_failures += 1
                clock.ended(now)  # the next one waits until the stuck task returns
            return
        if clock.due(now):
            clock.started(now)
            self._submit(self._checkpoint)
        elif compaction.due(now):
            self._submit(self._compact)

    def _submit(self, fn: Callable[[], Any]) -> None:
        self._task_started = time.monotonic()
        self._task = snapshots.in_thread(fn, "state")

    def _drain(self) -> None:
        """Wait for the in-flight checkpoint/compaction (they never raise), at most until
        `checkpoints.timeout` after it started; a task stuck longer is abandoned (nothing it
        would publish later can be half-done: manifests are written last)."""
        if self._task is None:
            return
        timeout = self.job.settings.checkpoints.timeout_s
        left = max(0.0, self._task_started + timeout - time.monotonic())
        try:
            self._task.result(timeout=left)
        except FutureTimeout:
            self.log(f"checkpoint still running after checkpoints.timeout ({timeout:g}s); "
                     "not waiting for it")
            metrics.CHECKPOINT_FAILURES.labels(pipeline=self.job.pipeline, kind="checkpoint").inc()
            self.tally.checkpoint_failures += 1
        self._task = None

    def _taker(self) -> snapshots.Taker | None:
        """A pod process: cluster snapshots (process 0 coordinates them); else the default."""
        share = self.share
        if share is None:
            return None
        return lambda kind, name: cluster_state.take(self.job, share, kind, name)

    def _checkpoint(self) -> bool:
        out = snapshots.take(self.job, "checkpoint", log=self.log, taker=self._taker())
        if out.ok:
            self.tally.checkpoints += 1
            self.tally.last_checkpoint = out.manifest.id
            self.health.checkpoint_done()
        else:
            self.tally.checkpoint_failures += 1
        self._write_status()
        return out.ok

    def _compact(self) -> None:
        try:
            from recovery.compact import compact

            rows = compact(self.state_dir)
        except Exception as exc:  # compaction is housekeeping: never fatal
            self.log(f"compaction failed: {type(exc).__name__}: {exc}")
            return
        self.tally.compactions += 1
        self.tally.rows_compacted += rows

    # -- endings ---------------------------------------------------------------

    def _finish(self) -> int:
        """Bounded input done: compact, final checkpoint, summary."""
        self.health.update(child_pid=None)
        self._phase = "finishing"
        self.log("dataflow finished (exit 0); " + ("answering process 0's final checkpoint"
                 if self.follower is not None else "taking the final checkpoint"))
        self._drain()
        self._compact()
        if self.follower is not None:  # process 0 takes the final checkpoint: answer it
            # (after draining its in-flight one: up to two checkpoint timeouts)
            self._await_coordinator("checkpoint", 2 * self.job.settings.checkpoints.timeout_s)
        else:
            self._checkpoint()
        self._phase = "completed"
        self._report("completed")
        return 0

    def _cancel(self) -> int:
        """Stop requested: stop the child, savepoint, externalized retention."""
        assert self.child is not None
        s = self.job.settings
        self._phase = "cancelling"
        name = signal.Signals(self._stop_signal or signal.SIGTERM).name
        self.log(f"{name} received; stopping the dataflow")
        self.child.stop(s.recovery.stop_grace_s)
        self.health.update(child_pid=None)
        self._drain()
        saved = True
        if s.savepoints.on_cancel and self.follower is not None:  # process 0 takes it: answer it
            # (after stopping its child and draining its in-flight checkpoint)
            budget = s.recovery.stop_grace_s + s.checkpoints.timeout_s + s.savepoints.timeout_s
            self._await_coordinator("savepoint", budget)
        elif s.savepoints.on_cancel:
            out = snapshots.take(self.job, "savepoint", name=f"cancel-{int(time.time())}", log=self.log,
                                 taker=self._taker())
            if out.timed_out:
                return self._savepoint_timed_out()
            self.tally.savepoint, saved = (out.manifest.id if out.ok else None), out.ok
        if self.follower is not None:
            pass  # externalized retention is process 0's: it took the savepoint
        elif s.checkpoints.externalized_retention == "DELETE_ON_CANCELLATION" and not saved:
            self.log("cancel savepoint failed: checkpoints kept despite DELETE_ON_CANCELLATION")
        elif s.checkpoints.externalized_retention == "DELETE_ON_CANCELLATION":
            try:
                self.tally.deleted_on_cancel = snapshots.delete_all_checkpoints(self.job)
            except Exception as exc:  # the savepoint exists; report and go on
                self.log(f"deleting checkpoints on cancel failed: {exc}")
        self._phase = "cancelled"
        self._report("cancelled")
        return 0

    def _await_coordinator(self, kind: str, timeout_s: float) -> None:
        """A pod process other than 0, stopping: keep answering until process 0's final
        checkpoint or cancel savepoint was answered, at most `timeout_s`."""
        assert self.follower is not None
        if self.follower.await_answer(kind, timeout_s):
            self.log(f"answered process 0's {kind} (the cluster's, taken once)")
        else:
            self.log(f"no {kind} request from process 0 within {timeout_s:g}s; stopping without it")

    def _savepoint_timed_out(self) -> int:
        """The cancel savepoint outlived savepoints.timeout: keep every checkpoint, exit 1."""
        timeout = self.job.settings.savepoints.timeout_s
        last = self.tally.last_checkpoint or "the newest in the store"
        self.log(f"cancel savepoint did not finish within savepoints.timeout ({timeout:g}s); "
                 f"giving up, exit 1; every checkpoint is kept (last checkpoint: {last})")
        self._phase = "savepoint-timeout"
        self._report("savepoint-timeout")
        return 1

    def _report(self, outcome: str) -> None:
        summary = run_summary(self.job, outcome, self.decision, self.tally.__dict__)
        if self.opts.json:
            print(json.dumps(summary.data, sort_keys=True, default=str), flush=True)
        else:
            print(summary.text, flush=True)

    # -- output ----------------------------------------------------------------

    def _out(self, line: str) -> None:
        print(line, file=sys.stderr if self.opts.json else sys.stdout, flush=True)

    def _write_status(self) -> None:
        status = {
            "pid": os.getpid(),
            "pipeline": self.job.pipeline,
            "phase": self._phase,
            "port": self._port,
            "child_pid": self.child.pid if self.child else None,
            "child_pids": (self.child.pids if isinstance(self.child, ChildGroup)
                           else [self.child.pid] if self.child and self.child.pid else []),
            "processes": self.cluster.processes if self.cluster else 1,
            "process_ids": list(self.cluster.local) if self.cluster else [0],
            "restore": self.decision.to_json() if self.decision else None,
            **self.tally.__dict__,
        }
        with self._status_lock:
            tmp = self.job.status_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(status, sort_keys=True, default=str))
            tmp.replace(self.job.status_file)
