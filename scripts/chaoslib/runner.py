"""Run one fault schedule of one workload under `streamforge run`, then check it.

The run starts the supervisor (`python -m streamforge_ops run --config ...`),
waits for its first dataflow child, then plays the schedule's timeline:
every fault becomes one or more timed actions (a kill, a pause and its
resume, a store fault window and its end, an operator command). Fault-point
faults (`child-kill-checkpoint-*`, `supervisor-kill-checkpoint-upload`,
`kafka-commit-kill`, `restore-swap-kill`) arm `STREAMFORGE_FAULT_POINT`
(dataflows/faults.py); a mark file records which of them fired. On a
cluster workload (`--processes 2`) `process-kill` SIGKILLs one process's child
(from the status's `child_pids`), `kill-children` points kill every process
of the cluster, and `kafka-commit-kill` the process that commits.

Like Kubernetes (restartPolicy Always), the runner starts the supervisor
again whenever it exits non-zero: at once after a SIGKILL, and at most
`MAX_FAILED_STARTS` times after any other exit (then the run fails with the
supervisor's last error). The run ends when a supervisor exits 0 with phase
`completed` (bounded input done); it is *stuck* if that does not happen
within `deadline_s`. Then every fault is healed and the output is read.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataflows.faults import children, fired
from scripts.chaoslib.checker import Record
from scripts.chaoslib.schedule import Fault, Schedule
from scripts.chaoslib.workloads import REPO, Workload
from tests.fixtures.fault_proxy import Mode

__all__ = ["RunOutcome", "ScheduleRunner"]

MAX_FAILED_STARTS = 6
LONG_RESTART_SKEW_S = 2 * 3600.0
CLOCK_SKEW_ENV = "STREAMFORGE_CLOCK_SKEW_SECONDS"
THROTTLE_MS = "2"
OBJECT_GET = r"^GET /[^/?]+/[^?]+$"  # path-style GET of an object (not a bucket listing)
POINT_OF = {  # fault kind -> armed fault point spec (nth filled in)
    "child-kill-checkpoint-copy": "checkpoint.copy@{nth}=kill-children",
    "child-kill-checkpoint-upload": "checkpoint.upload@{nth}=kill-children",
    "supervisor-kill-checkpoint-upload": "checkpoint.upload@{nth}=kill",
    "kafka-commit-kill": "kafka.commit@{nth}=kill",
}


# The durable broker's runs (workloads.DURABLE_SINK_TIMEOUTS: 30 s delivery and commit timeouts):
# a pause 30 s longer still outlasts the client timeouts, and the deadline grows by what the
# longer pause and timeouts can cost (a few restarts, each waiting out a 20-30 s timeout).
DURABLE_PAUSE_EXTRA_S = 30.0
DURABLE_DEADLINE_EXTRA_S = 300.0


@dataclass
class RunOutcome:
    records: list[Record] = field(default_factory=list)
    dlq: list[str] = field(default_factory=list)
    stuck: bool = False
    error: str | None = None  # the run could not complete (not a data verdict)
    fired: list[str] = field(default_factory=list)  # fault points that fired (the mark file)
    landed: list[str] = field(default_factory=list)  # fault kinds that struck (an action ran, a point fired)
    active_s: float = 0.0  # from the first dataflow start to completion
    progress: int = 0  # the output's size at completion (`Workload.progress`)
    state_lost: list[str] = field(default_factory=list)  # starts that silently dropped the state
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    log_positions: dict[str, list[str]] = field(default_factory=dict)  # Kafka: every record, committed or not
    out_topic: str = ""  # Kafka: the run's output topic
    late_records: list[Record] | None = None  # a stuck Kafka run: its output read after the deadline


@dataclass(order=True)
class _Action:
    at: float  # a fault's strike: output progress; its follow-ups: seconds after the strike, then a time
    label: str = field(compare=False)
    fn: Callable[[], bool] = field(compare=False)  # False: not possible now, try again next tick
    tries: int = field(default=0, compare=False)
    kind: str | None = field(default=None, compare=False)  # the fault kind it makes land
    then: list[_Action] = field(default_factory=list, compare=False)  # follow-ups (resume, heal)


def take_due(strikes: list[_Action], progress: float, now: float) -> list[_Action]:
    """The strikes (sorted by the progress they are due at) that `progress` has reached, removed
    from `strikes`, in schedule order and due `now`. A fast run can pass several in one poll:
    they must still land in their order (a broker-pause due before a broker-restart pauses the
    running broker, not one the restart has stopped)."""
    due = []
    while strikes and strikes[0].at <= progress:
        strike = strikes.pop(0)
        strike.at = now
        due.append(strike)
    return due


class ScheduleRunner:
    def __init__(self, schedule: Schedule, workload: Workload, *, deadline_s: float, total_progress: int,
                 log: Callable[[str], None]) -> None:
        self.schedule, self.w, self.log = schedule, workload, log
        self.deadline_s = deadline_s + (DURABLE_DEADLINE_EXTRA_S if workload.durable else 0.0)
        self.total = total_progress  # the fault-free run's final output progress: `Fault.at` is a fraction
        self.root = workload.root
        self.mark = self.root / "faults.fired"
        self.sup: subprocess.Popen[bytes] | None = None
        self.reap: list[subprocess.Popen[bytes]] = []
        self.ops: list[tuple[str, subprocess.Popen[bytes], float]] = []
        self.starts = 0
        self.failed_starts = 0
        self.skew = 0.0
        self.extra_points: list[str] = []
        self.outcome = RunOutcome()
        self.restart_at: float | None = None
        self.restart_points: list[str] = []
        self.published = False  # a checkpoint or savepoint of this run exists
        self._pending: list[_Action] = []  # actions added by actions
        self._expect_state: dict[int, bool] = {}  # supervisor pid -> published when it started
        self._seen_decisions: set[int] = set()
        self.points = [_armed(f, workload.processes) for f in schedule.faults if f.kind in POINT_OF]

    # -- processes ---------------------------------------------------------------

    def _env(self, *, armed: bool) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "STREAMFORGE_FAULT_MARK": str(self.mark),
               "STREAMFORGE_CHAOS_THROTTLE_MS": THROTTLE_MS, CLOCK_SKEW_ENV: str(self.skew)}
        env.pop("STREAMFORGE_FAULT_POINT", None)
        points = [*self.points, *self.restart_points] if armed else []
        if points:
            env["STREAMFORGE_FAULT_POINT"] = ",".join(points)
        return env

    def _spawn(self, args: list[str], name: str, *, armed: bool) -> subprocess.Popen[bytes]:
        self.starts += 1
        out = (self.root / f"{name}-{self.starts}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "streamforge_ops", *args, "--config", str(self.cfg)],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=self._env(armed=armed),
                                start_new_session=True)
        proc.log_path = out.name  # type: ignore[attr-defined]
        out.close()
        return proc

    def _start_supervisor(self) -> None:
        """Start `streamforge run` again, unless an older supervisor still runs the job (an upgrade
        killed before it stopped the old version): that one is the job again."""
        alive = [p for p in self.reap if p.poll() is None]
        if alive:
            self.sup = alive[-1]
            self.reap.remove(self.sup)
            self.outcome.notes.append(f"supervisor {self.sup.pid} (the old version) still runs the job")
            return
        self.sup = self._spawn(["run", *self.w.run_flags], "supervisor", armed=True)
        self.restart_points = []
        self._expect_state[self.sup.pid] = self.published

    def _watch_restores(self) -> None:
        """Note what each start restored from; a fresh start after a snapshot was published lost state."""
        st = self.status()
        pid, decision = st.get("pid"), st.get("restore")
        if st.get("last_checkpoint") or st.get("savepoint"):
            self.published = True
        if not isinstance(decision, dict) or not isinstance(pid, int) or pid in self._seen_decisions:
            return
        self._seen_decisions.add(pid)
        chosen = decision.get("chosen")
        self.outcome.notes.append(f"supervisor {pid} restored: {chosen} {decision.get('id') or ''}".rstrip())
        if chosen == "fresh" and self._expect_state.get(pid):
            self.outcome.state_lost.append(f"supervisor {pid} started fresh although a checkpoint or "
                                           f"savepoint had been published: {decision.get('reason')}")

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.root / "supervisor.json").read_text()))
        except (OSError, ValueError):
            return {}

    def _child_pids(self) -> list[int]:
        """The current supervisor's live dataflow children, by process id (one, or a cluster's)."""
        st = self.status()
        pids = st.get("child_pids") or ([st["child_pid"]] if st.get("child_pid") else [])
        if self.sup is None or st.get("pid") != self.sup.pid:
            return []
        return [int(p) for p in pids if _alive(int(p))]

    def _child_pid(self) -> int | None:
        pids = self._child_pids()
        return pids[0] if pids else None

    def _kill_supervisor(self, *, node: bool = False) -> bool:
        """SIGKILL the supervisor (`node`: every supervisor of the job, as a lost node does) and
        wait until its dataflow child is gone too."""
        if self.sup is None or self.sup.poll() is not None:
            return False
        for proc in [self.sup, *(self.reap if node else [])]:
            if proc.poll() is None:
                kids = children(proc.pid)
                proc.kill()
                proc.wait()
                for kid in kids:
                    _wait_dead(kid)
        return True

    # -- actions -----------------------------------------------------------------

    def _action(self, f: Fault) -> _Action | None:
        """The fault's strike (due at `f.at` of the fault-free output) and its follow-ups."""
        steps = self._steps(f)
        if not steps:
            return None
        first, *rest = steps
        first.at, first.then = f.at * self.total, rest
        return first

    def _steps(self, f: Fault) -> list[_Action]:
        at = 0.0  # the follow-ups' `at`: seconds after the strike
        p = f.params
        svc = self.w.services
        if f.kind == "child-kill":
            return [_Action(at, f.kind, self._kill_child, kind=f.kind)]
        if f.kind == "process-kill":
            return [_Action(at, f.kind, lambda: self._kill_child(p["process"]), kind=f.kind)]
        if f.kind in ("supervisor-kill", "long-restart", "restore-swap-kill", "restore-store-503"):
            return [_Action(at, f.kind, lambda: self._restart_supervisor(f), kind=f.kind)]
        broker = self.w.broker
        if f.kind == "broker-pause" and broker is not None:
            paused_s = p["for_s"] + (DURABLE_PAUSE_EXTRA_S if self.w.durable else 0.0)  # > the client timeouts
            return [_Action(at, "broker-pause", _true(lambda: svc.pause(broker)), kind=f.kind),
                    _Action(at + paused_s, "broker-resume", _true(lambda: svc.resume(broker)))]
        if f.kind == "broker-restart" and broker is not None:
            return [_Action(at, "broker-stop", _true(lambda: svc.stop_broker(broker)), kind=f.kind),
                    _Action(at + p["down_s"], "broker-start", _true(lambda: svc.start_broker(broker)))]
        if f.kind.startswith("store-"):
            mode: Mode = {"store-503": "slowdown", "store-reset": "reset", "store-slow": "delay"}[f.kind]  # type: ignore[assignment]
            return [_Action(at, f.kind, _true(lambda: svc.proxy.set_mode(
                        mode, delay_s=p.get("delay_s", 0.0), probability=p["probability"])), kind=f.kind),
                    _Action(at + p["for_s"], f"{f.kind}-end", _true(lambda: svc.proxy.set_mode("pass")))]
        if f.kind in ("op-checkpoint", "op-savepoint"):
            what = f.kind.removeprefix("op-")
            return [_Action(at, f.kind, lambda: self._op([what, "create"], f.kind), kind=f.kind)]
        if f.kind == "op-upgrade":
            return [_Action(at, f.kind, lambda: self._upgrade(p["mode"]), kind=f.kind)]
        return []  # fault-point kinds: armed in the environment

    def _kill_child(self, process: int = 0) -> bool:
        """SIGKILL the child of process `process` (False while the cluster is not all up)."""
        pids = self._child_pids()
        if len(pids) != self.w.processes:
            return False
        os.kill(pids[process], signal.SIGKILL)
        self.outcome.notes.append(f"killed process {process}'s child {pids[process]}")
        return True

    def _restart_supervisor(self, f: Fault) -> bool:
        if not self._kill_supervisor(node=f.kind in ("restore-swap-kill", "restore-store-503")):
            return False
        if f.kind == "long-restart":
            self.skew += LONG_RESTART_SKEW_S
        if f.kind in ("restore-swap-kill", "restore-store-503"):  # the node is gone: restore from the store
            shutil.rmtree(self.w.recovery_dir, ignore_errors=True)
        if f.kind == "restore-swap-kill":
            self.restart_points = ["restore.swap=kill"]
        if f.kind == "restore-store-503":
            proxy = self.w.services.proxy
            proxy.set_mode("slowdown", match=OBJECT_GET)  # reads of objects fail; listing works
            end = time.monotonic() + f.params["down_s"] + f.params["for_s"]
            self._pending.append(_Action(end, "restore-store-503-end", _true(lambda: proxy.set_mode("pass"))))
        self.restart_at = time.monotonic() + f.params.get("down_s", 0.0)
        return True

    def _op(self, args: list[str], label: str) -> bool:
        self.ops.append((label, self._spawn(args, label, armed=False), time.monotonic()))
        return True

    def _upgrade(self, mode: str) -> bool:
        if self.sup is None or self.sup.poll() is not None:
            return False
        self.reap.append(self.sup)
        self.sup = self._spawn(["upgrade", "--mode", mode], "upgrade", armed=True)
        self._expect_state[self.sup.pid] = self.published
        return True

    # -- the run -----------------------------------------------------------------

    def run(self) -> RunOutcome:
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self.cfg = self.w.write_config()
        self.outcome.out_topic = self.w.out_topic
        deadline = started + self.deadline_s
        try:
            self._start_supervisor()
            t0 = self._first_child(deadline)
            if t0 is not None:
                strikes = sorted(a for a in map(self._action, self.schedule.faults) if a is not None)
                self._loop(strikes, t0, deadline)
        finally:
            self._cleanup()
            self.w.close()
            self.w.services.heal()
        self.outcome.fired = fired(str(self.mark))
        for f in self.schedule.faults:  # a point fires once per run: the first fault arming it landed
            point = POINT_OF.get(f.kind, "").split("@")[0]
            if point and point in self.outcome.fired and not any(
                    POINT_OF.get(k, "").startswith(point + "@") for k in self.outcome.landed):
                self.outcome.landed.append(f.kind)
        if self.outcome.error is None and not self.outcome.stuck:
            try:
                self.outcome.records, self.outcome.dlq = self.w.read_output()
                self.outcome.log_positions = self.w.log_positions()
            except Exception as exc:  # noqa: BLE001 - e.g. a read_committed read that never ends
                self.outcome.stuck = True
                self.outcome.error = f"reading the output: {type(exc).__name__}: {exc}"
        if self.outcome.stuck and self.w.kafka:
            self._read_late()
        self.outcome.seconds = round(time.monotonic() - started, 1)
        return self.outcome

    def _read_late(self) -> None:
        """A stuck Kafka run, for the report only (the verdict stays stuck): its output read once
        more after the deadline, with every process stopped and every fault healed. Tells a broker
        that makes the committed output visible late from one that never does."""
        try:
            self.outcome.late_records, _ = self.w.read_output()
        except Exception as exc:  # noqa: BLE001 - a diagnostic
            self.outcome.notes.append(f"late read: {type(exc).__name__}: {str(exc)[:300]}")

    def _first_child(self, deadline: float) -> float | None:
        while time.monotonic() < deadline:
            if self._child_pid() is not None:
                return time.monotonic()
            if self.sup is not None and self.sup.poll() is not None:
                if not self._on_exit():
                    return None
            time.sleep(0.05)
        self.outcome.stuck = True
        self.outcome.error = "stuck: the first dataflow child never started"
        return None

    def _loop(self, strikes: list[_Action], t0: float, deadline: float) -> None:
        timeline: list[_Action] = []  # follow-ups, by time
        progress, progress_at = 0, 0.0
        while True:
            now = time.monotonic()
            if strikes and now - progress_at > 0.2:
                progress, progress_at = self.w.progress(), now
            timeline[:0] = take_due(strikes, progress, now)
            if now > deadline:
                self.outcome.stuck = True
                st = self.status()
                self.outcome.error = (f"stuck: not completed after {self.deadline_s:.0f}s (phase "
                                      f"{st.get('phase')}, restarts {st.get('restarts')}; pending "
                                      f"{[a.label for a in [*strikes, *timeline]]})")
                return
            if self._pending:
                timeline = sorted([*timeline, *self._pending])
                self._pending.clear()
            while timeline and timeline[0].at <= now:
                action = timeline.pop(0)
                if action.fn():
                    self.outcome.notes.append(f"{now - deadline + self.deadline_s:.1f}s {action.label}")
                    if action.kind:
                        self.outcome.landed.append(action.kind)
                    for follow in action.then:
                        follow.at += now
                    timeline = sorted([*timeline, *action.then])
                elif action.tries < 100:  # e.g. no child right now: retry for ~5 s
                    action.tries += 1
                    action.at = now + 0.05
                    timeline.insert(0, action)
                    break
                else:
                    self.outcome.notes.append(f"{action.label}: not possible, skipped")
            self._tend_ops()
            self._watch_restores()
            self.reap = [p for p in self.reap if p.poll() is None]
            if self.restart_at is not None and now >= self.restart_at:
                self.restart_at = None
                self._start_supervisor()
            if self.sup is not None and self.restart_at is None and self.sup.poll() is not None:
                if self.sup.returncode == 0 and self.status().get("phase") == "completed":
                    self.outcome.active_s = round(now - t0, 2)
                    self.outcome.progress = self.w.progress()
                    self.outcome.notes += [f"not reached: {a.label}" for a in strikes]
                    self.outcome.notes += [f"due, not struck: {a.label} ({a.tries} tries, progress "
                                           f"{progress}/{self.total})" for a in timeline if a.kind]
                    return
                if not self._on_exit():
                    return
            time.sleep(0.05)

    def _on_exit(self) -> bool:
        """The supervisor exited: start it again (False: give up, the run failed)."""
        assert self.sup is not None
        code = self.sup.returncode
        tail = _tail(Path(self.sup.log_path))  # type: ignore[attr-defined]
        if code != -signal.SIGKILL:
            self.failed_starts += 1
            self.outcome.notes.append(f"supervisor exited {code}: {tail[-300:]}")
            if self.failed_starts > MAX_FAILED_STARTS:
                self.outcome.error = f"the supervisor keeps failing (exit {code}): {tail[-1500:]}"
                return False
            time.sleep(0.5)
        self._start_supervisor()
        return True

    def _tend_ops(self) -> None:
        for label, proc, since in list(self.ops):
            if proc.poll() is not None:
                self.ops.remove((label, proc, since))
                self.published |= proc.returncode == 0
                if proc.returncode != 0:
                    self.outcome.notes.append(f"{label} exited {proc.returncode}: "
                                              f"{_tail(Path(proc.log_path))[-300:]}")  # type: ignore[attr-defined]
            elif time.monotonic() - since > 60:
                proc.kill()
                proc.wait()
                self.ops.remove((label, proc, since))
                self.outcome.notes.append(f"{label} did not end within 60s (killed)")

    def _cleanup(self) -> None:
        kids = self._child_pids()
        for proc in [*([self.sup] if self.sup else []), *self.reap, *(p for _, p, _ in self.ops)]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for kid in kids:
            _wait_dead(kid)


def _armed(f: Fault, processes: int) -> str:
    """The fault point spec of a fault-point fault. A point in the Bytewax child
    (`kafka.commit`) counts its hits per process: on N processes each sees about 1/N of the
    commits, so the N-th commit of the cluster is each process's ceil(nth / N)-th (the
    supervisor's points count every checkpoint of the cluster, as on one process)."""
    nth = int(f.params["nth"])
    if f.kind == "kafka-commit-kill":
        nth = -(-nth // processes)
    return POINT_OF[f.kind].format(nth=nth)


def _true(fn: Callable[[], Any]) -> Callable[[], bool]:
    def run() -> bool:
        fn()
        return True
    return run


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_dead(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return ""
