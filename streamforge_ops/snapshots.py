"""Take checkpoints and savepoints of a job, with metrics and a log line.

Shared by the supervisor (periodic checkpoints, savepoint on cancel, final
checkpoint) and the `checkpoint` / `savepoint` commands. A failure is counted
in `streamforge_checkpoint_failure_count_total{kind}` and returned as an
`Outcome` with the error: it never raises, so a failed checkpoint never stops
a flow.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from dataflows import metrics
from streamforge_ops.job import Job

__all__ = ["Outcome", "delete_all_checkpoints", "take", "update_savepoint_gauge"]

Log = Callable[[str], None]


def stderr_log(msg: str) -> None:
    print(f"streamforge: {msg}", file=sys.stderr, flush=True)


@dataclass
class Outcome:
    """What one checkpoint or savepoint attempt did."""

    kind: str
    manifest: Any | None = None
    error: str | None = None
    duration_ms: float = 0.0
    removed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.manifest is not None

    def describe(self) -> str:
        if not self.ok:
            return f"{self.kind} FAILED after {self.duration_ms:.0f} ms: {self.error}"
        m = self.manifest
        extra = f", retention removed {len(self.removed)}" if self.removed else ""
        return (
            f"{self.kind} {m.id} done in {self.duration_ms:.0f} ms "
            f"({m.total_bytes} bytes, {m.partition_count} partitions{extra})"
        )


def take(job: Job, kind: str = "checkpoint", *, name: str | None = None, log: Log = stderr_log) -> Outcome:
    """Take one checkpoint (then apply `checkpoints.retained`) or savepoint (then prune)."""
    from recovery import checkpoint, savepoint

    s, labels = job.settings, {"pipeline": job.pipeline, "kind": kind}
    t0 = time.monotonic()
    removed: list[str] = []
    try:
        if kind == "checkpoint":
            manifest = checkpoint.take_checkpoint(
                job.recovery_dir,
                job.checkpoint_store,
                pipeline=job.pipeline,
                code_version=s.code_version,
                incremental=s.checkpoints.incremental,
                full_every=s.checkpoints.full_every,
                signing_key=job.signing_key,
                timeout_s=s.checkpoints.timeout_s,
            )
            removed = checkpoint.apply_retention(
                job.checkpoint_store, job.pipeline, s.checkpoints.retained
            )
        else:
            manifest = savepoint.create_savepoint(
                job.recovery_dir,
                job.savepoint_store,
                pipeline=job.pipeline,
                name=name,
                code_version=s.code_version,
                signing_key=job.signing_key,
            )
            removed = savepoint.prune_savepoints(
                job.savepoint_store,
                job.pipeline,
                max_age_s=s.savepoints.max_age_s,
                max_count=s.savepoints.max_count,
            )
    except Exception as exc:  # any store / sqlite / timeout error: counted, logged, survived
        out = Outcome(kind, error=f"{type(exc).__name__}: {exc}", duration_ms=_ms(t0))
        metrics.CHECKPOINT_FAILURES.labels(**labels).inc()
        log(out.describe())
        return out
    out = Outcome(kind, manifest, duration_ms=_ms(t0), removed=tuple(removed))
    metrics.CHECKPOINT_DURATION.labels(**labels).observe(out.duration_ms)
    metrics.CHECKPOINTS_COMPLETED.labels(**labels).inc()
    metrics.CHECKPOINT_SIZE.labels(**labels).set(manifest.total_bytes)
    if kind == "checkpoint":
        metrics.LAST_CHECKPOINT_TIMESTAMP.labels(pipeline=job.pipeline).set(time.time())
    else:
        update_savepoint_gauge(job)
    log(out.describe())
    return out


def update_savepoint_gauge(job: Job) -> None:
    """`streamforge_savepoints{state="completed"}` = savepoints in the store."""
    from recovery.savepoint import list_savepoints

    try:
        count = len(list_savepoints(job.savepoint_store, job.pipeline))
    except Exception:  # a gauge refresh must not fail the caller
        return
    metrics.SAVEPOINTS.labels(pipeline=job.pipeline, state="completed").set(count)


def delete_all_checkpoints(job: Job) -> list[str]:
    """DELETE_ON_CANCELLATION: remove every checkpoint of the job (savepoints stay)."""
    from recovery.checkpoint import apply_retention

    return apply_retention(job.checkpoint_store, job.pipeline, 0)


def _ms(t0: float) -> float:
    return (time.monotonic() - t0) * 1000.0
