"""`streamforge savepoint verify ID [--config NEW]`: prove a savepoint loads into the new code.

"Test savepoint restore in staging before production upgrades", as one
command that touches nothing live:

1. restore the savepoint into a scratch directory (signature, checksums,
   digests verified as by every restore);
2. the step-id check against the NEW flow's stateful steps
   (recovery/steps.py), with `state.step-renames` applied to the scratch copy;
3. load every live state row with the new code (`rows`, in a subprocess with
   the flow module imported, so its classes and registered migrations are
   there): unpickle, the registered migrations (`recovery.migrate`), and the
   `STATE_VERSION` check (`_version_problem`);
4. run the new flow on the scratch state (`run`, in another subprocess)
   with every sink replaced by a discard sink and every source wrapped to
   record the position it resumes from and to end after `MAX_BATCHES` batches
   or `run_for` seconds:
   it proves the state loads into the operators, and whether each source
   resumes from the position the savepoint saved.

The report has per step: rows, loaded, migrated, failed and the first error;
per source partition: saved and resumed positions; `ok` is False on any
failure (the CLI exits 1).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamforge_ops.cli import CliError
from streamforge_ops.job import Job

__all__ = [
    "StepReport",
    "discard_sinks",
    "load_rows",
    "render_report",
    "verify_before_upgrade",
    "verify_savepoint",
]

UPGRADE_RUN_FOR_S = 5.0

CHILD_TIMEOUT_S = 300.0
MAX_BATCHES = 3  # per source partition: enough to run the restored state through every step
_LIVE = """
SELECT s.step_id, s.state_key, s.ser_change FROM snaps AS s
WHERE s.ser_change IS NOT NULL AND NOT EXISTS (
  SELECT 1 FROM snaps AS n WHERE n.step_id = s.step_id AND n.state_key = s.state_key
  AND n.snap_epoch > s.snap_epoch)
"""


@dataclass
class StepReport:
    """What loading one step's state rows with the new code did."""

    rows: int = 0
    loaded: int = 0
    migrated: int = 0
    failed: int = 0
    first_error: str | None = None
    versions: dict[str, int] = field(default_factory=dict)

    def fail(self, what: str) -> None:
        self.failed += 1
        self.first_error = self.first_error or what


def load_rows(recovery_dir: Path) -> dict[str, StepReport]:
    """Unpickle, migrate (in memory) and version-check every live row (see module doc)."""
    from recovery.migrate import MigrationError, state_version, upgrade_state
    from recovery.partitions import connect, partition_files

    steps: dict[str, StepReport] = {}
    for path in partition_files(recovery_dir):
        conn = connect(path, readonly=True)
        try:
            rows = conn.execute(_LIVE).fetchall()
        finally:
            conn.close()
        for step_id, key, blob in rows:
            rep = steps.setdefault(step_id, StepReport())
            rep.rows += 1
            where = f"{step_id}/{key}"
            try:
                state = pickle.loads(blob)
            except Exception as exc:  # noqa: BLE001 - any unpickling error is the finding
                rep.fail(f"{where}: cannot unpickle with the new code: {type(exc).__name__}: {exc}")
                continue
            try:
                state, changed = upgrade_state(step_id, state)
            except MigrationError as exc:
                rep.fail(f"{where}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - a registered migration raised
                rep.fail(f"{where}: migration failed: {type(exc).__name__}: {exc}")
                continue
            version = state_version(state)
            rep.versions[str(version)] = rep.versions.get(str(version), 0) + 1
            problem = _version_problem(state, version)
            if problem:
                rep.fail(f"{where}: {problem}")
                continue
            rep.loaded += 1
            rep.migrated += int(changed)
    return dict(sorted(steps.items()))


def _version_problem(state: Any, version: int) -> str | None:
    """Why the new code cannot take a state of `version`, or None.

    A state class that declares `STATE_VERSION` must match it exactly. Otherwise
    the code version is the highest `STATE_VERSION` of the classes in the state
    class's module (a pattern's logic class, e.g. `Deduplicator` next to
    `DedupState`): older states are the pattern's to load, a newer one was
    written by newer code (a downgrade), which nothing here can read.
    """
    own = getattr(type(state), "STATE_VERSION", None)
    if isinstance(own, int):
        return None if version == own else (
            f"state version {version}, the code expects {own} and no registered migration gets there")
    module = sys.modules.get(type(state).__module__)
    values = vars(module).values() if module is not None else ()
    declared = [getattr(v, "STATE_VERSION", None) for v in values if isinstance(v, type)]
    code = max((v for v in declared if isinstance(v, int)), default=None)
    if code is not None and version > code:
        return f"state version {version} was written by newer code (this code knows up to {code})"
    return None


def discard_sinks(flow: Any, run_for_s: float, resumed: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Replace every output's sink of `flow` by a discard sink and wrap every stateful
    source (record its resume state in `resumed`, end after MAX_BATCHES non-empty batches
    or `run_for_s`); returns the
    live counter of discarded items per output step."""
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    from recovery.positions import jsonable
    from streamforge_ops.flow_steps import core_steps

    discarded: dict[str, int] = {}
    deadline = time.monotonic() + run_for_s

    class _Drop(StatelessSinkPartition[Any]):
        def __init__(self, step_id: str) -> None:
            self.step_id = step_id

        def write_batch(self, items: list[Any]) -> None:
            discarded[self.step_id] = discarded.get(self.step_id, 0) + len(items)

    class _DiscardSink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Drop:
            return _Drop(step_id)

    class _Bounded(StatefulSourcePartition[Any, Any]):
        def __init__(self, inner: Any) -> None:
            self.inner, self.batches = inner, 0

        def next_batch(self) -> Any:
            if time.monotonic() > deadline or self.batches >= MAX_BATCHES:
                raise StopIteration()
            batch = list(self.inner.next_batch())
            self.batches += bool(batch)
            return batch

        def next_awake(self) -> Any:
            return self.inner.next_awake()

        def snapshot(self) -> Any:
            return self.inner.snapshot()

        def close(self) -> None:
            self.inner.close()

    class _Recording(FixedPartitionedSource[Any, Any]):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def list_parts(self) -> list[str]:
            return list(self.inner.list_parts())

        def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _Bounded:
            resumed.setdefault(step_id, {})[for_part] = jsonable(resume_state)
            return _Bounded(self.inner.build_part(step_id, for_part, resume_state))

    for step in core_steps(flow):  # the operator dataclasses are frozen, as in bytewax.dataflow
        if hasattr(step, "sink"):
            object.__setattr__(step, "sink", _DiscardSink())
            discarded.setdefault(step.step_id, 0)
        elif isinstance(getattr(step, "source", None), FixedPartitionedSource):
            object.__setattr__(step, "source", _Recording(step.source))
    return discarded


def _child(job: Job, *argv: str) -> dict[str, Any]:
    from streamforge_ops.child import child_env

    try:
        done = subprocess.run([sys.executable, "-m", "streamforge_ops.verify", *argv],
                              env=child_env(job.config_path), capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT_S:.0f}s"}
    if done.returncode != 0 or not done.stdout.strip():
        lines = done.stderr.strip().splitlines() or ["(no output)"]
        return {"error": lines[-1]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def verify_savepoint(job: Job, snap_id: str, *, run_for_s: float) -> dict[str, Any]:
    """The verification report of savepoint `snap_id` against `job`'s (new) flow.

    The savepoint is restored (and verified) into a scratch directory here; the
    checks and the run happen in one subprocess (`check_dir`), which imports
    the new code and, once every state connection is closed, runs Bytewax.
    """
    from streamforge_ops.restoring import restore_into

    with tempfile.TemporaryDirectory(prefix="sf-verify-") as tmp:
        rdir = Path(tmp) / "recovery"
        decision = restore_into(job, rdir, ("savepoint", snap_id), strict=True, check_steps=False)
        allow = ["--allow"] if job.settings.savepoints.allow_non_restored_state else []
        report = _child(job, "check", str(rdir), str(run_for_s), *allow)
    if "error" in report:
        report = {"ok": False, "failures": [f"checking with the new code: {report['error']}"],
                  "step_check": {"matched": [], "unclaimed": [], "new": [], "renamed": {}},
                  "steps": {}, "sources": {}, "run": {}}
    return {"savepoint": decision.id, "flow": job.settings.flow, **report}


def check_dir(job: Job, rdir: Path, run_for_s: float) -> dict[str, Any]:
    """Steps 2-4 of the module doc on the restored scratch directory `rdir` (in the child)."""
    from recovery.migrate import migrate_dir
    from recovery.partitions import partition_files
    from recovery.positions import source_positions
    from recovery.steps import check_steps, snapshot_steps
    from streamforge_ops.flow_steps import load_flow, stateful_steps_of
    from streamforge_ops.restore_steps import apply_step_renames, step_renames

    failures: list[str] = []
    flow = load_flow(job.settings.flow)  # imports the new code: classes, registered migrations
    check = check_steps(snapshot_steps(rdir), stateful_steps_of(flow), step_renames(job))
    if check.unclaimed and not job.settings.savepoints.allow_non_restored_state:
        failures.append(check.refusal("the savepoint"))
    apply_step_renames(job, rdir)
    steps = load_rows(rdir)
    failures += [f"step {s}: {r.failed} row(s) failed: {r.first_error}" for s, r in steps.items() if r.failed]
    inputs = [s for s in stateful_steps_of(flow, inputs_only=True) if s in check.matched]
    saved = source_positions(partition_files(rdir), input_steps=inputs) if inputs else {}
    run: dict[str, Any] = {"skipped": "an earlier failure"}
    if not failures:
        migrate_dir(rdir)  # the scratch copy: the run loads what `state migrate` would leave
        run = _run(flow, rdir, run_for_s)
        if "error" in run:
            failures.append(f"running the new flow on the savepoint's state: {run['error']}")
    resumed: dict[str, dict[str, Any]] = run.pop("resumed", {})
    sources = {
        step: {part: {"saved": pos, "resumed": resumed.get(step, {}).get(part),
                      "resumes_from_saved": resumed.get(step, {}).get(part) == pos}
               for part, pos in parts.items()}
        for step, parts in saved.items()
    }
    if "error" not in run and "skipped" not in run:
        failures += [f"source {s} partition {p} did not resume from the saved position"
                     for s, parts in sources.items() for p, v in parts.items() if not v["resumes_from_saved"]]
    return {"ok": not failures, "failures": failures, "step_check": check.to_dict(),
            "steps": {k: v.__dict__ for k, v in steps.items()}, "sources": sources, "run": run}


def _run(flow: Any, rdir: Path, run_for_s: float) -> dict[str, Any]:
    """Run `flow` on `rdir` with discard sinks and bounded sources (see `discard_sinks`)."""
    from datetime import timedelta

    from bytewax.recovery import RecoveryConfig
    from bytewax.testing import run_main

    resumed: dict[str, dict[str, Any]] = {}
    discarded = discard_sinks(flow, run_for_s, resumed)
    t0 = time.monotonic()
    try:
        run_main(flow, epoch_interval=timedelta(seconds=1), recovery_config=RecoveryConfig(str(rdir)))
    except Exception as exc:  # noqa: BLE001 - the new code failing on the old state is the finding
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0], "resumed": resumed}
    return {"resumed": resumed, "discarded": discarded, "ran_s": round(time.monotonic() - t0, 3)}


def verify_before_upgrade(job: Job, snap_id: str) -> None:
    """`streamforge upgrade`'s check: verify `snap_id` with the new config; CliError if it fails."""
    from streamforge_ops.output import progress

    progress(f"verifying savepoint {snap_id} against the new version ({job.settings.flow}) ...")
    report = verify_savepoint(job, snap_id, run_for_s=UPGRADE_RUN_FOR_S)
    if not report["ok"]:
        raise CliError("the new version cannot take over the state; the old version is left running "
                       f"(see `streamforge savepoint verify {snap_id}`; --skip-verify skips this):\n"
                       + render_report(report))
    progress(f"savepoint {snap_id} verified: every state row loads and the sources resume")


def render_report(report: dict[str, Any]) -> str:
    """The text form of a verification report."""
    from streamforge_ops.output import table

    rows = [{"step": s, **{k: v for k, v in r.items() if k != "versions"}}
            for s, r in report["steps"].items()]
    lines = [f"savepoint {report['savepoint']} against {report['flow']}: "
             f"{'OK' if report['ok'] else 'FAILED'}"]
    if rows:
        lines.append(table(rows, ("step", "rows", "loaded", "migrated", "failed", "first_error")))
    for step, parts in report["sources"].items():
        for part, v in parts.items():
            lines.append(f"source {step} [{part}]: resumes from saved position: {v['resumes_from_saved']}")
    lines += [f"new step (starts empty): {s}" for s in report["step_check"]["new"]]
    lines += [f"failure: {f}" for f in report["failures"]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`check DIR SECONDS [--allow]`: one JSON line on stdout (the parent's `_child`)."""
    from streamforge_ops.job import load_job
    from streamforge_ops.restore_steps import allow_non_restored

    job = load_job(None)
    if "--allow" in argv[3:]:
        job = allow_non_restored(job)
    print(json.dumps(check_dir(job, Path(argv[1]), float(argv[2])), default=str))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
