"""Match the steps a snapshot holds state for against the steps of the flow that will load it.

Bytewax loads state by exact step id and silently ignores rows of any other
id: a renamed, re-wrapped or removed step would start empty with no word
said. Flink refuses such a restore unless `--allowNonRestoredState`
(`execution.savepoint.ignore-unclaimed-state`) is given; StreamForge does the
same (`--allow-non-restored-state`, `savepoints.allow-non-restored-state`).

- `snapshot_steps(dir)`: step ids with live (non-NULL) state rows in a
  recovery directory.
- `check_steps(saved, flow, renames)`: the `StepCheck` of one restore:
  `unclaimed` (state of steps the flow does not have), `new` (stateful steps
  of the flow with no state: they start empty), `renamed` (old -> new).
- `rename_steps(dir, renames)` rewrites step ids (`state.step-renames`);
  `drop_steps(dir, steps)` deletes the rows of unclaimed steps.

A rename maps a step id or a step-id prefix: `{"orders.dedup": "orders.uniq"}`
renames `orders.dedup.stateful_batch` to `orders.uniq.stateful_batch`
(a prefix matches on a dot boundary only). Pure: no Bytewax import here; the
flow's step ids come from the caller (streamforge_ops.flow_steps).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recovery.partitions import connect, partition_files

__all__ = [
    "NonRestoredStateError",
    "StepCheck",
    "check_steps",
    "drop_steps",
    "rename_steps",
    "renamed_id",
    "snapshot_steps",
]


class NonRestoredStateError(Exception):
    """The snapshot holds state of steps the new flow does not have."""


def renamed_id(step_id: str, renames: Mapping[str, str]) -> str:
    """`step_id` after the longest matching rename (exact id or dot-bounded prefix)."""
    best = ""
    for old in renames:
        if (step_id == old or step_id.startswith(old + ".")) and len(old) > len(best):
            best = old
    return renames[best] + step_id[len(best):] if best else step_id


@dataclass
class StepCheck:
    """The outcome of matching a snapshot's steps to a flow's stateful steps."""

    matched: list[str] = field(default_factory=list)
    unclaimed: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None  # why the check could not run (the flow could not be built)

    def to_dict(self) -> dict[str, Any]:
        return {"matched": self.matched, "unclaimed": self.unclaimed, "new": self.new,
                "renamed": self.renamed, "skipped": self.skipped}

    def notes(self) -> list[str]:
        """One line per fact an operator should see after the restore."""
        if self.skipped:
            return [f"step-id check NOT done: {self.skipped}"]
        out = [f"step {old} restored as {new} (state.step-renames)" for old, new in self.renamed.items()]
        out += [f"step {s} has no state in the snapshot: it starts empty" for s in self.new]
        out += [f"state of step {s} dropped (allow-non-restored-state)" for s in self.unclaimed]
        return out

    def refusal(self, what: str) -> str:
        """The error message of a restore refused for `unclaimed`."""
        steps = ", ".join(self.unclaimed)
        return (
            f"{what} holds state of steps the flow does not have: {steps}. Restoring would drop it "
            "silently. Map renamed steps in state.step-renames (old: new), or drop the state with "
            "--allow-non-restored-state (config savepoints.allow-non-restored-state: true)"
        )


def check_steps(saved: Iterable[str], flow: Iterable[str], renames: Mapping[str, str]) -> StepCheck:
    """Match `saved` step ids (renamed by `renames`) against the flow's stateful `flow` ids."""
    flow_ids = set(flow)
    check = StepCheck()
    claimed: set[str] = set()
    for old in sorted(set(saved)):
        new = renamed_id(old, renames)
        if new != old:
            check.renamed[old] = new
        if new in flow_ids:
            check.matched.append(new)
            claimed.add(new)
        else:
            check.unclaimed.append(old)
    check.new = sorted(flow_ids - claimed)
    return check


def snapshot_steps(recovery_dir: Path) -> dict[str, int]:
    """Step id -> number of live (non-NULL) state rows, over every partition."""
    steps: dict[str, int] = {}
    for path in partition_files(Path(recovery_dir)):
        conn = connect(path, readonly=True)
        try:
            for step_id, n in conn.execute(
                "SELECT step_id, COUNT(*) FROM snaps WHERE ser_change IS NOT NULL GROUP BY step_id"
            ):
                steps[step_id] = steps.get(step_id, 0) + n
        finally:
            conn.close()
    return steps


def _rewrite(recovery_dir: Path, sql_for: Any) -> int:
    """Run the statements `sql_for(step_ids)` yields in each partition, one transaction each."""
    changed = 0
    for path in partition_files(Path(recovery_dir)):
        conn = connect(path)
        try:
            with conn:
                ids = [r[0] for r in conn.execute("SELECT DISTINCT step_id FROM snaps")]
                for sql, params in sql_for(ids):
                    changed += conn.execute(sql, params).rowcount
        finally:
            conn.close()
    return changed


def rename_steps(recovery_dir: Path, renames: Mapping[str, str]) -> int:
    """Rewrite the step ids of every row per `renames`; returns the rows changed.

    Refuses (NonRestoredStateError) a rename onto a step id that already holds
    state: merging two steps' rows is not a rename.
    """
    present = set(snapshot_steps(recovery_dir))
    for old in present:
        new = renamed_id(old, renames)
        if new != old and new in present:
            raise NonRestoredStateError(
                f"state.step-renames: cannot rename {old} to {new}: {new} already has state"
            )

    def statements(ids: list[str]) -> Iterable[tuple[str, tuple[str, ...]]]:
        for old in ids:
            new = renamed_id(old, renames)
            if new != old:
                yield "UPDATE snaps SET step_id = ? WHERE step_id = ?", (new, old)

    return _rewrite(recovery_dir, statements)


def drop_steps(recovery_dir: Path, steps: Iterable[str]) -> int:
    """Delete every row of `steps`; returns the rows deleted."""
    doomed = set(steps)

    def statements(ids: list[str]) -> Iterable[tuple[str, tuple[str, ...]]]:
        for step_id in ids:
            if step_id in doomed:
                yield "DELETE FROM snaps WHERE step_id = ?", (step_id,)

    return _rewrite(recovery_dir, statements)
