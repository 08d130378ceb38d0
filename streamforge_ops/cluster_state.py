"""The state of one pod process of a Bytewax cluster (`--process-id K --addresses ...`).

A pod's supervisor holds only its share of the partitions (`recovery.placement`), in
`<recovery.dir>/proc-K` on its own volume (`streamforge_ops.cluster.prepare_own_dir`).
What it does with them (`recovery.cluster_checkpoint` is the protocol):

- at start, a directory without partitions (a new volume, a new process count) or an
  explicit `--restore` target gets its share of the chosen checkpoint or savepoint,
  whatever process count took it (rescale), through the usual chain and checks
  (`restoring.restore_into` with the owned partitions);
- process 0 coordinates: its periodic checkpoints, its final checkpoint and its
  cancel savepoint are cluster snapshots (`take`); every other process answers them
  (`Follower`, for the checkpoint store and, if different, the savepoint store);
- on SIGTERM with `savepoints.on-cancel`, a process other than 0 keeps answering until
  it answered one savepoint request issued after its stop began (process 0's cancel
  savepoint), or `savepoints.timeout`: one savepoint, taken once, for the cluster;
- `streamforge checkpoint create` / `savepoint create` run inside a pod (the rendered pods
  set `STREAMFORGE_PROCESS_ID` / `STREAMFORGE_ADDRESSES`) take a cluster snapshot from
  process 0 (`pod_taker`) and are refused, naming process 0, in the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recovery.cluster_checkpoint import Request, follow, take_cluster_snapshot
from recovery.manifest import Manifest
from recovery.partitions import partition_files
from recovery.placement import owned, process_dir
from streamforge_ops import restoring
from streamforge_ops.job import Job

__all__ = ["Follower", "Share", "pod_taker", "restore_share", "take"]

Log = Callable[[str], None]
# A request process 0 issued up to this long before this process's own stop began is the one
# it waits for (the pods' stops are not simultaneous; their clocks differ a little).
SKEW_S = 30.0


@dataclass(frozen=True)
class Share:
    """Process `process_id` of `processes`, its partitions in `directory`."""

    process_id: int
    processes: int
    directory: Path

    @classmethod
    def of(cls, job: Job, process_id: int, processes: int) -> Share:
        return cls(process_id, processes, process_dir(job.recovery_dir, process_id))

    @property
    def coordinator(self) -> bool:
        return self.process_id == 0


def restore_share(
    job: Job, share: Share, target: restoring.Target | None, *, strict: bool = False
) -> restoring.Decision | None:
    """Restore `share` from the store when its directory holds no partitions (or `target`
    is given); None when it keeps its local partitions (`prepare_own_dir` checks them)."""
    if target is None and partition_files(share.directory):
        return None
    decision = restoring.restore_into(
        job, share.directory, target or "latest", strict=strict,
        partitions=owned(share.process_id, share.processes, job.settings.recovery.partitions),
    )
    decision.reason = f"process {share.process_id} of {share.processes}: {decision.reason}"
    return decision


def take(job: Job, share: Share, kind: str, name: str | None) -> Manifest:
    """Process 0: one cluster checkpoint or savepoint (the `taker` of `snapshots.take`)."""
    s = job.settings
    savepoint = kind == "savepoint"
    return take_cluster_snapshot(
        share.directory,
        job.savepoint_store if savepoint else job.checkpoint_store,
        pipeline=job.pipeline,
        processes=share.processes,
        partition_count=s.recovery.partitions,
        kind="savepoint" if savepoint else "checkpoint",
        name=name,
        code_version=s.code_version,
        signing_key=job.signing_key,
        timeout_s=s.savepoints.timeout_s if savepoint else s.checkpoints.timeout_s,
    )


def pod_taker(job: Job) -> Callable[[str, str | None], Manifest] | None:
    """The `taker` of a CLI snapshot command run in a pod of a cluster (its env names the
    process), None elsewhere; CliError in a pod other than process 0's."""
    from streamforge_ops.cli import CliError
    from streamforge_ops.cluster import cluster_from_args

    cluster = cluster_from_args(None, None, None)
    if cluster is None or cluster.holds_all:
        return None
    share = Share.of(job, cluster.local[0], cluster.processes)
    if not share.coordinator:
        raise CliError(f"this is process {share.process_id} of a {share.processes}-process cluster: "
                       f"run the command in process 0's pod ({cluster.addresses[0]}), which "
                       "coordinates the cluster's checkpoints and savepoints")
    return lambda kind, name: take(job, share, kind, name)


class Follower:
    """A process other than 0: answers process 0's requests in daemon threads."""

    def __init__(self, job: Job, share: Share, log: Log, poll_s: float = 1.0) -> None:
        self.job, self.share, self.log, self.poll_s = job, share, log, poll_s
        self._stop = threading.Event()
        self._answered = threading.Condition()
        self._answers: list[tuple[Request, float]] = []  # each answered request, when answered

    def start(self) -> Follower:
        stores = {self.job.checkpoint_store.url: self.job.checkpoint_store,
                  self.job.savepoint_store.url: self.job.savepoint_store}
        for url, store in stores.items():
            threading.Thread(
                target=follow, name=f"cluster-follow-{url}", daemon=True,
                args=(self.share.directory, store, self.job.pipeline, self.share.process_id,
                      self.share.processes, self._stop),
                kwargs={"log": self.log, "poll_s": self.poll_s, "on_answer": self._on_answer},
            ).start()
        return self

    def _on_answer(self, req: Request, error: Exception | None) -> None:
        with self._answered:
            self._answers.append((req, time.time()))
            self._answered.notify_all()

    def await_answer(self, kind: str, timeout_s: float) -> bool:
        """Wait until this process answered process 0's final checkpoint or cancel
        savepoint (`kind`): a request answered from now on, or a cancel savepoint
        (``cancel-*``, the supervisor's name for it) issued up to `SKEW_S` ago (process 0
        stopped first); False after `timeout_s`. Any other earlier answer (a periodic
        checkpoint, an operator's savepoint) is not the one it waits for."""
        now = time.time()

        def answered() -> bool:
            return any(req.kind == kind and (at >= now or (
                kind == "savepoint" and (req.name or "").startswith("cancel-")
                and req.issued_at >= now - SKEW_S)) for req, at in self._answers)

        with self._answered:
            return self._answered.wait_for(answered, timeout=timeout_s)

    def stop(self) -> None:
        self._stop.set()
