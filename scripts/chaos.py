"""Adversarial fault harness: run the pipelines under seeded fault schedules, check every record.

    .venv/bin/python scripts/chaos.py --runs 100 --seed 1 [--json]
    .venv/bin/python scripts/chaos.py --seed 1 --run 17                 # re-run exactly run 17
    .venv/bin/python scripts/chaos.py --replay-schedule '{"seed": ...}' # re-run a printed schedule
    .venv/bin/python scripts/chaos.py --workloads cluster-exactly-once --runs 10 --seed 1 --json

Each run draws a fault schedule from `random.Random(seed + run)`
(scripts/chaoslib/schedule.py: kills of the Bytewax child at any moment, also
inside a checkpoint copy or upload, a restore swap and commit_transaction;
kills of the supervisor; broker pauses longer than the client timeouts and
broker restarts; an object store answering 503, resetting connections or
slow, through a fault-injecting HTTP proxy in front of moto; restarts with
the clock 2 h ahead; `streamforge checkpoint create`, `savepoint create` and
`upgrade` while it runs) and runs one workload (orders Kafka -> Kafka
exactly-once with 2 workers and 4 output partitions; the same at-least-once
through the Deduplicator; file -> file) under `streamforge run`; opt-in with
`--workloads`, `cluster-exactly-once`: the first on `--processes 2` (kills of
one process's child, of the supervisor, inside a coordinated checkpoint),
checked against the one-process fault-free output. The output
(read_committed for Kafka) and the DLQ are compared with a fault-free run of
the same input (once per workload and invocation): lost, duplicated and
divergent records, and runs that do not end within their deadline (stuck).

The harness starts its own Tansu broker (storage on a moto server of its own,
so a restart keeps the log), moto and the proxy on free loopback ports, and
stops them at the end. Progress goes to stderr; the exit code is 1 when any
run failed (every failure prints the command that replays it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.chaoslib.checker import check  # noqa: E402
from scripts.chaoslib.runner import RunOutcome, ScheduleRunner  # noqa: E402
from scripts.chaoslib.schedule import WORKLOADS, Schedule, draw_schedule, parse_workloads  # noqa: E402
from scripts.chaoslib.services import Services  # noqa: E402
from scripts.chaoslib.workloads import REPO, Workload, WorkloadInput, input_of, make_input  # noqa: E402


def _where_lost(base: RunOutcome, out: RunOutcome) -> str:
    """For lost Kafka records: whether the output log holds them uncommitted (a transaction the
    broker never committed although the writer's commit succeeded) or not at all."""
    if not out.log_positions:
        return ""
    got = {r.event_id for r in out.records}
    lost = sorted({r.event_id for r in base.records} - got)
    found = {eid: out.log_positions[eid] for eid in lost if eid in out.log_positions}
    sample = "; ".join(f"{eid} at {pos}" for eid, pos in list(found.items())[:3])
    return (f" [log: {len(found)} of {len(lost)} lost id(s) are in the output log but not read_committed"
            f"{': ' + sample if sample else ''}]")


def replay_command(schedule: Schedule, workloads: tuple[str, ...], *, drawn: bool) -> str:
    """The command that re-runs `schedule`: `--run K` (with `--workloads` when not the default)
    for a drawn one, `--replay-schedule` for one given as JSON (its `run` is not a draw's)."""
    if not drawn:
        return f"python scripts/chaos.py --replay-schedule '{schedule.to_json()}'"
    replay = f"python scripts/chaos.py --seed {schedule.seed} --run {schedule.run}"
    return replay if workloads == WORKLOADS else f"{replay} --workloads {','.join(workloads)}"


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Chaos:
    """One invocation: shared services, inputs and fault-free outputs per workload."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.services: Services | None = None
        self.inputs: dict[tuple[str, bool], WorkloadInput] = {}
        self.baselines: dict[str, RunOutcome] = {}
        self.report: dict[str, Any] = {"runs": 0, "faults": Counter(), "landed": Counter(), "lost": 0,
                                       "duplicated": 0, "divergent": 0, "stuck": 0, "stuck_torn_commit": 0, "stuck_complete_late": 0, "state_lost": 0,
                                       "failures": []}

    def _workload(self, schedule: Schedule, tag: str) -> Workload:
        """The run's workload; runs that restart the broker use the durable one (services.py)."""
        assert self.services is not None
        name, durable = input_of(schedule.workload), "broker-restart" in schedule.kinds()
        broker = None if name == "file" else self.services.broker(durable=durable)
        if (name, durable) not in self.inputs:
            self.inputs[name, durable] = make_input(name, broker, self.work / ("s3" if durable else "mem"),
                                                    self.args.records, self.args.seed, self.args.input)
        return Workload(self.inputs[name, durable], self.services, broker, self.work / tag,
                        f"{tag}-{uuid.uuid4().hex[:6]}", self.args.pipeline_config, schedule.workload)

    def _run(self, schedule: Schedule, tag: str, total_progress: int = 0) -> RunOutcome:
        runner = ScheduleRunner(schedule, self._workload(schedule, tag),
                                deadline_s=self.args.deadline, total_progress=total_progress, log=log)
        return runner.run()

    def _torn_commits(self, schedule: Schedule, out: RunOutcome) -> list[str]:
        """For a stuck run on the durable broker: its output's commits that Tansu left torn."""
        if self.services is None or "broker-restart" not in schedule.kinds() or not out.out_topic:
            return []
        try:
            return self.services.torn_commits(out.out_topic)
        except Exception as exc:  # noqa: BLE001 - a diagnostic: never hides the run's own failure
            log(f"  (could not read the broker's transaction state: {exc})")
            return []

    def baseline(self, workload: str) -> RunOutcome:
        if workload not in self.baselines:
            log(f"[{workload}] fault-free run ...")
            out = self._run(Schedule(self.args.seed, -1, workload, ()), f"baseline-{workload}")
            if out.error:
                log(f"[{workload}] the fault-free run failed: {out.error}")
            log(f"[{workload}] fault-free: {len(out.records)} records, {len(out.dlq)} dead letters "
                f"in {out.seconds}s ({out.active_s}s processing)")
            self.baselines[workload] = out
        return self.baselines[workload]

    def run_one(self, schedule: Schedule) -> None:
        base = self.baseline(input_of(schedule.workload))  # the cluster's: the one-process output
        out = self._run(schedule, f"run{schedule.run}", base.progress) if base.error is None else \
            RunOutcome(error=f"the fault-free run of {schedule.workload} failed: {base.error}")
        r = self.report
        r["runs"] += 1
        r["faults"].update(schedule.kinds())
        r["landed"].update(out.landed)
        what: str | None = None
        if out.stuck:
            r["stuck"] += 1
            what = out.error
            torn = self._torn_commits(schedule, out)
            if torn:
                r["stuck_torn_commit"] += 1
                what = f"{what} [broker: a restart left {len(torn)} commit(s) torn: {'; '.join(torn[:3])}]"
            if out.late_records is not None:
                late = check(base.records, out.late_records, exactly_once=schedule.workload != "kafka-at-least-once")
                if late.ok:
                    r["stuck_complete_late"] += 1
                what = f"{what} [its output after the deadline: " + ("complete, exactly once]" if late.ok else
                    f"{late.lost} not written, {late.duplicated} duplicated, {late.divergent} divergent]")
        elif out.error:
            what = out.error
        else:
            exactly_once = schedule.workload != "kafka-at-least-once"
            v = check(base.records, out.records, exactly_once=exactly_once, baseline_dlq=base.dlq, got_dlq=out.dlq,
                      exact_dlq=schedule.workload == "file")
            r["lost"] += v.lost
            r["duplicated"] += v.duplicated
            r["divergent"] += v.divergent
            if not v.ok:
                what = v.what() + _where_lost(base, out)
            if out.state_lost:
                r["state_lost"] += len(out.state_lost)
                what = "; ".join([*([what] if what else []), *out.state_lost])
        status = "ok" if what is None else "FAIL"
        log(f"run {schedule.run} [{schedule.workload}] {' '.join(schedule.kinds())} "
            f"(landed: {' '.join(out.landed) or '-'}) {out.seconds}s: {status}{'' if what is None else ': ' + what}")
        missed = [k for k in schedule.kinds() if k not in out.landed]
        if missed:  # the run says nothing about these faults: say why they did not strike
            log(f"  not landed: {' '.join(missed)}; notes: {out.notes[-6:]}")
        if what is not None:
            replay = replay_command(schedule, self.args.workloads, drawn=not self.args.replay_schedule)
            r["failures"].append({"seed": schedule.seed, "run": schedule.run, "schedule": json.loads(schedule.to_json()),
                                  "what": what, "replay": replay, "notes": out.notes[-12:],
                                  "workdir": str(self.work / f"run{schedule.run}")})
            log(f"  replay: {replay}\n  schedule: {schedule.to_json()}\n  notes: {out.notes[-12:]}")

    def execute(self, schedules: list[Schedule]) -> dict[str, Any]:
        kafka = any(s.workload != "file" for s in schedules)
        self.services = Services(self.work, kafka=kafka, seed=self.args.seed).start()
        try:
            for schedule in schedules:
                self.run_one(schedule)
                if self.args.out:
                    Path(self.args.out).write_text(json.dumps(self.summary(), indent=1))
        finally:
            self.services.stop()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        return {**self.report, "faults": dict(self.report["faults"]), "landed": dict(self.report["landed"])}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="number of runs (default 10)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the fault schedules (default 1)")
    ap.add_argument("--run", type=int, metavar="K", help="run only run K of this seed (a failure's replay)")
    ap.add_argument("--replay-schedule", metavar="JSON", help="run exactly this schedule (as printed)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), metavar="A,B,...",
                    help=f"the workloads runs are drawn over (default {','.join(WORKLOADS)}; opt-in: "
                         "cluster-exactly-once, the orders pipeline Kafka -> Kafka on --processes 2)")
    ap.add_argument("--records", type=int, default=800, help="input records per workload (default 800)")
    ap.add_argument("--deadline", type=float, default=150.0, help="seconds a run may take (default 150)")
    ap.add_argument("--pipeline-config", type=Path, default=REPO / "config" / "orders.yaml", metavar="YAML",
                    help="your pipeline's config (default config/orders.yaml): its flow, parse and patterns "
                         "are kept; source, sinks, recovery and checkpoints are the harness's")
    ap.add_argument("--input", type=Path, metavar="JSONL",
                    help="input lines for your pipeline (default: generated orders); the first --records are used")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    ap.add_argument("--out", metavar="FILE", help="also write the summary to FILE after every run")
    ap.add_argument("--keep", action="store_true", help="keep the work directory even when every run passed")
    args = ap.parse_args(argv)
    try:
        args.workloads = parse_workloads(args.workloads)
    except ValueError as exc:
        ap.error(str(exc))
    if args.runs < 1 or args.records < 10 or args.deadline <= 0:
        ap.error("--runs must be >= 1, --records >= 10 and --deadline > 0")
    for flag, path in (("--pipeline-config", args.pipeline_config), ("--input", args.input)):
        if path is not None and not path.is_file():
            ap.error(f"{flag}: {path} is not a file")
    return args


def schedules_of(args: argparse.Namespace) -> list[Schedule]:
    if args.replay_schedule:
        try:
            return [Schedule.from_json(args.replay_schedule)]
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"chaos.py: error: --replay-schedule: not a schedule ({exc})") from None
    if args.run is not None:
        return [draw_schedule(args.seed, args.run, args.workloads)]
    return [draw_schedule(args.seed, run, args.workloads) for run in range(args.runs)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    schedules = schedules_of(args)
    work = Path(tempfile.mkdtemp(prefix="sf-chaos-"))
    log(f"chaos: {len(schedules)} run(s), seed {args.seed}, work dir {work}")
    t0 = time.monotonic()
    report = Chaos(args, work).execute(schedules)
    report["seconds"] = round(time.monotonic() - t0, 1)
    failed = bool(report["failures"])
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(f"{report['runs']} runs in {report['seconds']}s: lost {report['lost']}, duplicated "
              f"{report['duplicated']}, divergent {report['divergent']}, stuck {report['stuck']}, "
              f"{len(report['failures'])} failed run(s); faults drawn {report['faults']}")
    if not failed and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
