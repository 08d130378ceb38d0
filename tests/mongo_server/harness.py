"""Run the customers_cdc pipeline as a subprocess against the test server.

Used by the crash-loop tests, `scripts/crashloop_mongo.py` and
`bench/mongo.py`: write a config pointing at a server, initialise Bytewax
recovery partitions, start `python -m bytewax.run ... -r DIR -s 1 -b 0`,
SIGKILL it, start it again; a seeded `Workload` of inserts, updates,
replaces and deletes runs against the source collection meanwhile.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from bson import ObjectId

from recovery.partitions import connect, init_partitions, partition_files, resume_epoch

__all__ = [
    "PipelineProcess",
    "Workload",
    "committed_source_state",
    "crash_loop",
    "documents",
    "wait_streaming_committed",
    "wait_until",
    "write_config",
]

REPO = Path(__file__).resolve().parents[2]
FLOW = "dataflows.pipelines.customers_cdc:flow"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll `predicate` until true; AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def documents(coll: Any) -> dict[Any, Any]:
    """The whole collection as {_id: document}."""
    return {d["_id"]: d for d in coll.find()}


def write_config(path: Path, *, uri: str, database: str, source: str = "customers",
                 target: str = "customers_view", workdir: Path, mirror: bool = True,
                 **source_extra: Any) -> Path:
    """A customers_cdc config for `uri`, everything else under `workdir`."""
    cfg = {
        "pipeline": {"name": "customers_cdc", "flow": FLOW, "workers": 1, "code-version": "1"},
        "source": {"type": "mongo", "uri": uri, "database": database, "collections": [source],
                   "max-await": "20ms", "server-selection-timeout": "1s",
                   "reconnect-max-backoff": "500ms", **source_extra},
        "sink": {"type": "mongo", "uri": uri, "database": database, "collection": target, "mirror": mirror,
                 "retry": {"max-attempts": 20, "initial-backoff": "20ms", "max-backoff": "500ms"}},
        "dlq": {"type": "file", "path": str(workdir / "dlq.jsonl")},
        "recovery": {"dir": str(workdir / "recovery"), "partitions": 1, "snapshot-interval": "1s",
                     "backup-interval": "0s"},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class PipelineProcess:
    """One pipeline run directory: config, recovery partitions, the running process."""

    config: Path
    recovery_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @classmethod
    def prepare(cls, workdir: Path, config: Path, partitions: int = 1) -> PipelineProcess:
        rec = workdir / "recovery"
        init_partitions(rec, partitions)
        return cls(config, rec, workdir / "pipeline.log")

    def start(self) -> None:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "STREAMFORGE_CONFIG": str(self.config), "PYTHONPATH": path}
        cmd = [sys.executable, "-m", "bytewax.run", FLOW, "-r", str(self.recovery_dir), "-s", "1", "-b", "0"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL (no clean shutdown), and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"pipeline exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


BIG_DOC_BYTES = 15 << 20  # near MongoDB's 16 MiB document limit (an event still fits)


def mixed_id(i: int) -> Any:
    """The i-th workload `_id`: strings, int32, int64 above 2**53 (exactness) and ObjectIds, in turn."""
    kind = i % 4
    if kind == 0:
        return f"cust-{i:05d}"
    if kind == 1:
        return i
    if kind == 2:
        return 2**60 + i
    return ObjectId(i.to_bytes(12, "big"))


@dataclass
class Workload:
    """Seeded random changes to a collection of `keys` possible documents.

    With `mixed_ids`, `_id`s mix BSON types (`mixed_id`); with `big_docs`, that many
    extra keys are sometimes written as documents near the 16 MiB limit; deletes are
    sometimes followed at once by a re-insert of the same `_id`.
    """

    coll: Any
    seed: int
    keys: int = 200
    mixed_ids: bool = False
    big_docs: int = 0
    rng: random.Random = field(init=False)
    ops: int = 0
    reinserts: int = 0
    big_writes: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def key(self, i: int) -> Any:
        return mixed_id(i) if self.mixed_ids else f"cust-{i:05d}"

    def step(self) -> None:
        r = self.rng.random()
        if self.big_docs and r < 0.01:
            self._big()
            return
        k = self.key(self.rng.randrange(self.keys))
        self.ops += 1
        if self.mixed_ids and r < 0.05:
            self.coll.delete_one({"_id": k})
            self.coll.insert_one({"_id": k, "name": f"again{self.ops}", "visits": 0})
            self.reinserts += 1
        elif r < 0.45:
            self.coll.replace_one({"_id": k}, {"name": f"n{self.ops}", "tier": self.rng.choice("abc"),
                                               "visits": self.rng.randrange(100)}, upsert=True)
        elif r < 0.8:
            self.coll.update_one({"_id": k}, {"$inc": {"visits": 1}, "$set": {"seen": self.ops}})
        else:
            self.coll.delete_one({"_id": k})

    def _big(self) -> None:
        k = f"big-{self.rng.randrange(self.big_docs)}"
        self.ops += 1
        self.big_writes += 1
        if self.rng.random() < 0.3:
            self.coll.delete_one({"_id": k})
        else:
            self.coll.replace_one({"_id": k}, {"blob": "b" * BIG_DOC_BYTES, "n": self.ops}, upsert=True)

    def run(self, n: int) -> None:
        for _ in range(n):
            self.step()


def crash_loop(db: Any, uri: str, workdir: Path, *, seed: int, kills: int, resync_docs: int = 0,
               roll_oplog: Callable[[], None] | None = None, converge_timeout: float = 90.0,
               mixed_ids: bool = False, big_docs: int = 0, roll_during_resync: bool = False) -> dict[str, Any]:
    """Run the pipeline, SIGKILL it `kills` times at seeded random moments, check convergence.

    With `resync_docs`, the source collection starts with that many documents and
    the first start re-syncs them throttled; the first kill waits until part of
    that scan is committed, so at least one restart resumes a scan mid-way. With
    `roll_oplog`, the oplog is rolled over while the pipeline is down (every
    other kill): the next start must re-sync, and documents deleted meanwhile
    must disappear from the target; with `roll_during_resync` as well, the oplog
    is rolled again while that re-sync scans (its start position is lost: the
    source retries it once). `mixed_ids` / `big_docs`: see `Workload`. Returns a
    summary; raises AssertionError (with the pipeline log) if the target does not
    converge to the source.
    """
    rng = random.Random(seed)
    extra: dict[str, Any] = {}
    if resync_docs:
        extra = {"snapshot-max-docs-per-second": max(100, resync_docs // 8), "snapshot-chunk-size": 100}
    config = write_config(workdir / "config.yaml", uri=uri, database=db.name, workdir=workdir, **extra)
    proc = PipelineProcess.prepare(workdir, config)
    work = Workload(db.customers, seed, mixed_ids=mixed_ids, big_docs=big_docs)
    if resync_docs:
        db.customers.insert_many([{"_id": work.key(i), "name": f"seed{i}", "visits": 0}
                                  for i in range(work.keys, work.keys + resync_docs)])
    else:
        db.customers.insert_one({"_id": "cust-first", "name": "first"})
    proc.start()
    rolls = scan_rolls = 0
    try:
        for n in range(kills):
            until = time.monotonic() + rng.uniform(0.5, 4.0)
            while time.monotonic() < until:
                work.step()
                time.sleep(0.002)
            rolling = roll_oplog is not None and n % 2 == 1
            if n == 0 and resync_docs:
                wait_until(lambda: _mid_scan(proc), 60, "a committed, half-done re-sync")
            elif n == 0 or rolling:
                wait_streaming_committed(proc, 120)  # later restarts resume from a (confirmed) token
            proc.check_alive()
            proc.kill()
            if rolling:
                assert roll_oplog is not None
                generation = getattr(committed_source_state(proc.recovery_dir), "generation", 0)
                work.run(20)  # changes (incl. deletes) the pipeline can only learn by re-sync
                roll_oplog()
                rolls += 1
            proc.start()
            if rolling and roll_during_resync and roll_oplog is not None and _roll_mid_scan(proc, roll_oplog, generation):
                scan_rolls += 1
                wait_streaming_committed(proc, 120)  # the retried re-sync finished and resumed
        work.run(100)
        wait_until(lambda: _converged(db, proc), converge_timeout, "target == source", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- pipeline log ---\n{proc.log_tail()}") from None
    finally:
        proc.kill()
    log = proc.log_tail(10_000)
    ids = {type(d["_id"]).__name__ for d in db.customers.find({}, {"_id": 1})}
    return {"kills": kills, "starts": proc.starts, "ops": work.ops, "rolls": rolls,
            "rolls_during_resync": scan_rolls, "reinserts": work.reinserts, "big_writes": work.big_writes,
            "docs": db.customers.count_documents({}), "id_types": sorted(ids),
            "resyncs_started": log.count("re-sync as generation"),
            "resyncs_resumed": log.count("resuming re-sync"),
            "resyncs_retried": log.count("retrying once")}


def _roll_mid_scan(proc: PipelineProcess, roll_oplog: Callable[[], None], generation: int,
                   timeout: float = 60.0) -> bool:
    """Roll the oplog once the restarted pipeline has committed part of its re-sync.

    False if the re-sync (a generation above `generation`) finished before a
    mid-scan state was committed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check_alive()
        state = committed_source_state(proc.recovery_dir)
        if state is not None and state.scan is not None and state.scan.docs > 0:
            roll_oplog()
            return True
        if state is not None and state.generation > generation:
            return False
        time.sleep(0.05)
    return False


def _mid_scan(proc: PipelineProcess) -> bool:
    proc.check_alive()
    state = committed_source_state(proc.recovery_dir)
    return state is not None and state.scan is not None and state.scan.docs > 0


def _converged(db: Any, proc: PipelineProcess) -> bool:
    proc.check_alive()
    return documents(db.customers) == documents(db.customers_view)


def committed_source_state(recovery_dir: Path) -> Any:
    """The source partition state a restart would resume from (None if there is none yet)."""
    files = partition_files(recovery_dir)
    conns = [connect(p, readonly=True) for p in files]
    try:
        resume = resume_epoch(conns)
        if resume is None:
            return None
        rows = [row for c in conns for row in c.execute(
            "SELECT snap_epoch, ser_change FROM snaps WHERE step_id LIKE '%.source' "
            "AND snap_epoch < ? AND ser_change IS NOT NULL", (resume,))]
    finally:
        for c in conns:
            c.close()
    return pickle.loads(max(rows)[1]) if rows else None


def wait_streaming_committed(proc: PipelineProcess, timeout: float = 30.0) -> None:
    """Wait until the committed source state holds a token outside any re-sync."""
    def ready() -> bool:
        proc.check_alive()
        state = committed_source_state(proc.recovery_dir)
        # confirmed: no re-sync running, pending (lost_resyncs) or waiting to resume its start position
        return (state is not None and (state.token is not None or getattr(state, "start_at", None) is not None)
                and state.scan is None and not getattr(state, "unconfirmed", False)
                and getattr(state, "lost_resyncs", 0) == 0)

    wait_until(ready, timeout, "a committed streaming position")
