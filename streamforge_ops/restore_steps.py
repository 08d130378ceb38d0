"""The step-id check of every restore (supervisor, `restore`, `savepoint restore`, `upgrade`).

Before restored partitions replace the local ones (and before local ones are
resumed), their step ids are matched against the stateful steps of the
job's flow (`recovery.steps.check_steps`):

- state of a step renamed in `state.step-renames` (`{old: new}`) is moved to
  the new id (`recovery.steps.rename_steps`, the same rewrite `state migrate`
  applies);
- state of a step the flow does not have refuses the restore with the list
  of those steps, unless `--allow-non-restored-state` or
  `savepoints.allow-non-restored-state: true` says to drop it (Flink's
  `--allowNonRestoredState` / `execution.savepoint.ignore-unclaimed-state`);
- a stateful step with no state is reported: it starts empty;
- state written before the keyed lanes (issue 11: separate dedup, merge,
  materialize / sessions steps), restored into a flow that has the lane step,
  is first fused into the lane's state (`dataflows.flow.legacy`).

A flow that cannot be built because of its config fails the restore (exit
2); one that cannot be built because a service did not answer (Kafka
metadata) skips the check with a note: its dataflow cannot run either, and
the supervisor restarts it with backoff (streamforge_ops/child.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dataflows.flow.legacy import LANE_STEP, fuse_legacy_steps, legacy_lane_steps
from recovery.steps import (
    NonRestoredStateError,
    StepCheck,
    check_steps,
    drop_steps,
    rename_steps,
    snapshot_steps,
)
from streamforge_ops.cli import CliError
from streamforge_ops.flow_steps import FlowUnavailable, stateful_steps
from streamforge_ops.job import Job

if TYPE_CHECKING:
    from recovery.manifest import Manifest

__all__ = [
    "add_allow_arg",
    "allow_non_restored",
    "allowing",
    "apply_step_check",
    "apply_step_renames",
    "check_local",
    "restore_check",
    "step_renames",
]

RENAMES_KEY = "state.step-renames"


def add_allow_arg(parser: argparse.ArgumentParser) -> None:
    """`--allow-non-restored-state` (overrides savepoints.allow-non-restored-state)."""
    parser.add_argument(
        "--allow-non-restored-state", action="store_true",
        help="drop the state of steps the flow no longer has instead of refusing the restore "
             "(config savepoints.allow-non-restored-state)",
    )


def allowing(job: Job, args: argparse.Namespace) -> Job:
    """`job` with savepoints.allow-non-restored-state set when the flag is given."""
    return allow_non_restored(job) if getattr(args, "allow_non_restored_state", False) else job


def allow_non_restored(job: Job) -> Job:
    """`job` with savepoints.allow-non-restored-state set."""
    sp = replace(job.settings.savepoints, allow_non_restored_state=True)
    return replace(job, settings=replace(job.settings, savepoints=sp))


def step_renames(job: Job) -> dict[str, str]:
    """`state.step-renames`: a mapping of old step id (or prefix) -> new."""
    raw = job.cfg.raw(RENAMES_KEY, None) or {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in raw.items()
    ):
        raise CliError(f"{RENAMES_KEY}: expected a mapping of old step id -> new step id "
                       f"(in {job.config_path}), got {raw!r}")
    return dict(raw)


def apply_step_renames(job: Job, directory: Path) -> int:
    """Rename steps in `directory` per state.step-renames; rows changed."""
    renames = step_renames(job)
    if not renames:
        return 0
    try:
        return rename_steps(directory, renames)
    except NonRestoredStateError as exc:
        raise CliError(str(exc)) from None


def apply_step_check(job: Job, directory: Path, what: str) -> StepCheck:
    """Check `directory` against the flow, then rename / drop (see module doc).

    Raises NonRestoredStateError (nothing changed) if state would be dropped
    without permission.
    """
    saved = snapshot_steps(directory)
    if not saved:
        return StepCheck()
    try:
        flow = stateful_steps(job.settings.flow, job.config_path)
    except FlowUnavailable as exc:  # e.g. Kafka down: the child cannot run either; said loudly
        return StepCheck(skipped=str(exc))
    legacy = legacy_lane_steps(set(saved))
    if any(LANE_STEP.format(flow=f) in flow for f in legacy):  # state from before the keyed lanes
        fuse_legacy_steps(directory)
        saved = snapshot_steps(directory)
    check = check_steps(saved, flow, step_renames(job))
    if check.unclaimed and not job.settings.savepoints.allow_non_restored_state:
        raise NonRestoredStateError(check.refusal(what))
    if check.renamed:
        apply_step_renames(job, directory)
    if check.unclaimed:
        drop_steps(directory, check.unclaimed)
    return check


def restore_check(job: Job) -> Callable[[Path, Manifest], list[str]]:
    """The `check` hook of `recovery.restore.restore`: the step check of each candidate."""

    def check(directory: Path, m: Manifest) -> list[str]:
        from recovery.restore import RestoreError

        try:
            return apply_step_check(job, directory, f"{m.kind} {m.id}").notes()
        except NonRestoredStateError as exc:
            raise RestoreError(str(exc)) from None

    return check


def check_local(job: Job, directory: Path) -> list[str]:
    """The step check of local partitions about to be resumed; refusal -> CliError."""
    try:
        return apply_step_check(job, directory, f"the local partitions in {directory}").notes()
    except NonRestoredStateError as exc:
        raise CliError(f"resume refused: {exc}") from None
