"""Take checkpoints and savepoints of a job, with retention, metrics and a log line.

Shared by the supervisor (periodic checkpoints, savepoint on cancel, final
checkpoint) and the `checkpoint` / `savepoint` commands. The recovery library
records the success metrics (duration, size, completed, last timestamp); a
failure is counted here in `streamforge_checkpoint_failure_count_total{kind}`
and returned as an `Outcome` with the error: `take` never raises, so a failed
checkpoint never stops a flow. A savepoint (the SIGTERM one, the preStop hook's
`savepoint create`, the upgrade's) is bounded by `savepoints.timeout`: one still
running then is abandoned in its daemon thread (its manifest, written last, is
never published: the savepoint's own deadline refuses it) and reported as a
failure with `timed_out`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from dataflows import metrics
from streamforge_ops.job import Job

__all__ = ["Outcome", "delete_all_checkpoints", "in_thread", "take", "update_savepoint_gauge"]

Log = Callable[[str], None]
Taker = Callable[[str, "str | None"], Any]  # (kind, name) -> the published Manifest


def stderr_log(msg: str) -> None:
    print(f"streamforge: {msg}", file=sys.stderr, flush=True)


@dataclass
class Outcome:
    """What one checkpoint or savepoint attempt did."""

    kind: str
    manifest: Any = None  # recovery.manifest.Manifest when ok
    error: str | None = None
    duration_ms: float = 0.0
    removed: tuple[str, ...] = ()
    timed_out: bool = False  # a savepoint abandoned after savepoints.timeout

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


def in_thread(fn: Callable[[], Any], name: str) -> Future[Any]:
    """Run `fn` in a daemon thread; its Future. (Not a ThreadPoolExecutor: its workers
    are joined at interpreter exit, so a call stuck in I/O would hang the exit.)"""
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def take(job: Job, kind: str = "checkpoint", *, name: str | None = None, log: Log = stderr_log,
         taker: Taker | None = None) -> Outcome:
    """Take one checkpoint (then apply `checkpoints.retained`) or savepoint (then prune);
    a savepoint gives up after `savepoints.timeout` (see module doc). `taker(kind, name)`
    takes it instead of the one-directory default (a cluster's: `cluster_state.take`)."""
    if kind != "savepoint":
        return _take(job, kind, name, log, taker)
    timeout = job.settings.savepoints.timeout_s
    try:
        result: Outcome = in_thread(lambda: _take(job, kind, name, log, taker), "savepoint").result(timeout)
        return result
    except FutureTimeout:
        out = Outcome(kind, error=f"did not finish within savepoints.timeout ({timeout:g}s)",
                      duration_ms=timeout * 1000.0, timed_out=True)
        metrics.CHECKPOINT_FAILURES.labels(pipeline=job.pipeline, kind=kind).inc()
        log(out.describe())
        return out


def _take(job: Job, kind: str, name: str | None, log: Log, taker: Taker | None = None) -> Outcome:
    from recovery import checkpoint, savepoint

    s, labels = job.settings, {"pipeline": job.pipeline, "kind": kind}
    t0 = time.monotonic()
    removed: list[str] = []
    try:
        if taker is not None:
            manifest = taker(kind, name)
        elif kind == "checkpoint":
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
        else:
            manifest = savepoint.create_savepoint(
                job.recovery_dir,
                job.savepoint_store,
                pipeline=job.pipeline,
                name=name,
                code_version=s.code_version,
                signing_key=job.signing_key,
                timeout_s=s.savepoints.timeout_s,
            )
        if kind == "checkpoint":
            removed = checkpoint.apply_retention(
                job.checkpoint_store, job.pipeline, s.checkpoints.retained
            )
        else:
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
    # take_checkpoint itself records duration, size, completed and the timestamp
    out = Outcome(kind, manifest, duration_ms=_ms(t0), removed=tuple(removed))
    if kind == "savepoint":
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
    """DELETE_ON_CANCELLATION: remove every checkpoint of the job, complete or not
    (savepoints stay). Returns the deleted ids."""
    from recovery.checkpoint import delete_snapshot

    root = f"{job.pipeline}/checkpoints/"
    ids = sorted({key[len(root):].split("/", 1)[0] for key in job.checkpoint_store.list(root)})
    for snap_id in reversed(ids):  # newest first: never leave a delta without its base
        delete_snapshot(job.checkpoint_store, job.pipeline, "checkpoint", snap_id)
    return ids


def _ms(t0: float) -> float:
    return (time.monotonic() - t0) * 1000.0
