"""Decide what state a job starts from, and bring it into the recovery directory.

Order (DESIGN.md §7): an explicit target (`checkpoint:ID`, `savepoint:ID`,
`latest`) is restored from the store, replacing the local partitions. Without
one, local partitions that already hold progress are resumed as they are
(they are at least as new as any checkpoint taken from them); otherwise the
restore chain runs: latest valid checkpoint -> latest savepoint -> fresh.
Either way the recovery directory ends up initialised with the configured
partition count, and the caller gets a `Decision` saying what and why.

A restore that fails (the store could not be read, the signing key is
missing or changed: `recovery.restore`) exits with the message and creates
nothing. It also leaves the marker ``restore-required`` next to the
recovery directory: until a restore succeeds or the operator passes
``--fresh``, local partitions are not resumed (the chain runs again) and
``--no-restore`` is refused, so no start after a failed restore continues
from a local state that does not hold the stored one. An interrupted
restore swap is completed or rolled back first (`recovery.swap.settle`).
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from streamforge_ops.cli import CliError
from streamforge_ops.job import Job

__all__ = [
    "Decision",
    "Target",
    "has_local_progress",
    "parse_target",
    "prepare",
    "restore_into",
    "restore_required",
]

Target = Literal["latest"] | tuple[Literal["checkpoint", "savepoint"], str]


@dataclass
class Decision:
    """What the job starts from: 'local', 'checkpoint', 'savepoint' or 'fresh'."""

    chosen: str
    id: str | None
    reason: str
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        what = f"{self.chosen} {self.id}" if self.id else self.chosen
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        return f"restore: {what} ({self.reason}){notes}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_target(text: str | None) -> Target | None:
    """`latest`, `checkpoint:ID` or `savepoint:ID` (also `checkpoint ID`) -> restore target."""
    if text is None:
        return None
    text = text.strip()
    if text == "latest":
        return "latest"
    kind, sep, ident = text.replace(" ", ":", 1).partition(":")
    if not sep or kind not in ("checkpoint", "savepoint") or not ident:
        raise CliError(f"bad restore target {text!r}: use latest, checkpoint:ID or savepoint:ID")
    return (cast(Literal["checkpoint", "savepoint"], kind), ident)


def has_local_progress(recovery_dir: Path) -> bool:
    """True if any partition recorded a frontier, i.e. a dataflow ran on it."""
    for part in sorted(recovery_dir.glob("part-*.sqlite3")):
        try:
            with sqlite3.connect(f"file:{part}?mode=ro", uri=True) as conn:
                if conn.execute("SELECT COUNT(*) FROM fronts").fetchone()[0]:
                    return True
        except sqlite3.Error:
            return True  # unreadable is not "empty": never overwrite it silently
    return False


def _marker(recovery_dir: Path) -> Path:
    return recovery_dir.absolute().parent / "restore-required"


def restore_required(recovery_dir: Path) -> str | None:
    """Why the last restore of the chain into `recovery_dir` failed, if it did (see module doc)."""
    marker = _marker(recovery_dir)
    return marker.read_text().strip() if marker.exists() else None


def restore_into(
    job: Job, recovery_dir: Path, target: Target, *, strict: bool = False, check_steps: bool = True,
    partitions: list[int] | None = None,
) -> Decision:
    """Run recovery.restore.restore into `recovery_dir`; RestoreError -> CliError.

    `check_steps`: match the snapshot's step ids to the flow's (restore_steps).
    `partitions`: only these (a cluster process's share, `streamforge_ops.cluster_state`).
    A failure of the ``latest`` chain leaves the ``restore-required`` marker;
    a success removes it.
    """
    from recovery.restore import RestoreError, restore
    from streamforge_ops.restore_steps import restore_check

    try:
        res = restore(
            recovery_dir,
            checkpoint_store=job.checkpoint_store,
            savepoint_store=job.savepoint_store,
            pipeline=job.pipeline,
            partition_count=job.settings.recovery.partitions,
            target=target,
            strict=strict,
            signing_key=job.signing_key,
            allow_unsigned=job.settings.security.allow_unsigned,
            retry=job.settings.checkpoints.restore_retry,
            check=restore_check(job) if check_steps else None,
            partitions=partitions,
        )
    except RestoreError as exc:
        if target == "latest":
            _marker(recovery_dir).parent.mkdir(parents=True, exist_ok=True)
            _marker(recovery_dir).write_text(f"{exc}\n")
        raise CliError(f"restore failed: {exc}") from None
    _marker(recovery_dir).unlink(missing_ok=True)
    return Decision(res.chosen, res.id, res.reason, list(res.notes))


def prepare(
    job: Job, target: Target | None, *, strict: bool = False, fresh: bool = False, no_restore: bool = False
) -> Decision:
    """Bring the job's recovery directory to its starting state (see module doc)."""
    from recovery.partitions import PartitionError, init_partitions
    from recovery.swap import settle

    rdir = job.recovery_dir
    job.signing_key  # noqa: B018 - a placeholder or required-but-missing key fails at start
    settled = settle(rdir)
    failed = restore_required(rdir)
    if fresh:
        shutil.rmtree(rdir, ignore_errors=True)
        _marker(rdir).unlink(missing_ok=True)
        decision = Decision("fresh", None, "--fresh: local state discarded, store not consulted")
    elif no_restore and failed:
        raise CliError(
            f"--no-restore: the last restore of {job.pipeline!r} failed ({failed}); the local "
            "partitions do not hold that state. Start without --no-restore to restore it, or "
            "with --fresh to start from scratch"
        )
    elif no_restore:
        decision = Decision(
            "local" if has_local_progress(rdir) else "fresh",
            None,
            "--no-restore: store not consulted",
        )
    elif target is None and not failed and has_local_progress(rdir):
        decision = Decision(
            "local", None, f"local partitions in {rdir} hold progress; resuming them"
        )
        from streamforge_ops.restore_steps import check_local

        decision.notes += check_local(job, rdir)
    else:
        decision = restore_into(job, rdir, target or "latest", strict=strict)
    try:
        created = init_partitions(rdir, job.settings.recovery.partitions)
    except PartitionError as exc:  # e.g. the directory holds another partition count
        raise CliError(str(exc)) from None
    if created:
        decision.notes.append(f"created {job.settings.recovery.partitions} partitions in {rdir}")
    decision.notes[:0] = settled
    return decision
