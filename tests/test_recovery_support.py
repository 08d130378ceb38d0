"""Shared helpers for the recovery tests (no tests here).

`counting_flow` is a small stateful flow: per key, the running sum of the
values; a value of None discards the key (the TTL churn of the patterns).
Its input is a TestingSource, whose snapshot (the offset in the list) is the
"source position" of the flow; `run` executes it with recovery enabled.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

Item = tuple[str, int | None]


def _add(state: int | None, value: int | None) -> tuple[int | None, tuple[int | None, bool]]:
    if value is None:
        return None, (state, False)
    total = (state or 0) + value
    return total, (total, True)


def counting_flow(items: list, out: list, flow_id: str = "count") -> Dataflow:
    """``(key, value)`` items -> ``(key, (running_sum, alive))``."""
    flow = Dataflow(flow_id)
    stream = op.input("inp", flow, TestingSource(items, batch_size=50))
    sums = op.stateful_map("sum", stream, _add)
    op.output("out", sums, TestingSink(out))
    return flow


def run(
    flow: Dataflow, recovery_dir: Path | None, *, workers: int = 1, backup_s: float = 3600
) -> None:
    """Run to completion with recovery (epoch per batch, long backup interval)."""
    rc = (
        RecoveryConfig(str(recovery_dir), backup_interval=timedelta(seconds=backup_s))
        if recovery_dir is not None
        else None
    )
    if workers == 1:
        run_main(flow, epoch_interval=timedelta(0), recovery_config=rc)
    else:
        cluster_main(
            flow,
            [],
            0,
            epoch_interval=timedelta(0),
            recovery_config=rc,
            worker_count_per_proc=workers,
        )


def final_sums(out: list) -> dict[str, int | None]:
    """The last emitted state per key (None for keys discarded last)."""
    last: dict[str, int | None] = {}
    for key, (total, alive) in out:
        last[key] = total if alive else None
    return {k: v for k, v in last.items() if v is not None}


@dataclass
class CounterV1:
    """Version 1 of a pattern state: a count."""

    count: int
    version: int = 1


@dataclass
class CounterV2:
    """Version 2: count renamed to total, plus the number of updates."""

    total: int
    updates: int
    version: int = 2


def segments(spec: list) -> list:
    """Items from ``[[prefix, n, keys, value], ...]`` (value None discards)."""
    return [(f"{prefix}{i % keys}", value) for prefix, n, keys, value in spec for i in range(n)]


def run_in_subprocess(
    recovery_dir: Path, spec: list, backup_s: float = 3600
) -> subprocess.Popen[bytes]:
    """Start the counting flow over `segments(spec)` in another process.

    A flow and take_checkpoint/compact must not share a process: Bytewax
    links its own SQLite, and two SQLite copies in one process break each
    other's POSIX locks and WAL shared memory (observed: SIGBUS).
    """
    code = (
        "import json, sys; from pathlib import Path; "
        "from tests.test_recovery_support import counting_flow, run, segments; "
        "run(counting_flow(segments(json.loads(sys.argv[2])), []), Path(sys.argv[1]), "
        "backup_s=float(sys.argv[3]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(recovery_dir), json.dumps(spec), str(backup_s)],
        cwd=Path(__file__).resolve().parents[1],
    )


def live_resume_epoch(recovery_dir: Path) -> int | None:
    """The epoch a resume of `recovery_dir`'s partitions would start from (read-only)."""
    from recovery.partitions import connect, partition_files, resume_epoch

    conns = [connect(f, readonly=True) for f in partition_files(recovery_dir)]
    try:
        return resume_epoch(conns)
    finally:
        for c in conns:
            c.close()


def uploaded_digests(store: Any, m: Any) -> list[str]:
    """The logical digest every partition of snapshot `m` (a `Manifest` in `store`) restores
    to: its entry's, or for a full partition recorded as `recovery.pack.FRAME_DIGEST`
    (manifest format 2: the bytes are the check) the `ms1:` digest of the copy it stored,
    read back from the store."""
    import tempfile

    from recovery.pack import FRAME_DIGEST, Packs
    from recovery.partitions import logical_digest
    from recovery.transfer import get_file

    with tempfile.TemporaryDirectory() as d:
        packs = Packs(lambda key, path: get_file(store, key, path), Path(d))
        out = []
        for e in m.partitions:
            if e.digest != FRAME_DIGEST:
                out.append(e.digest)
                continue
            copy = Path(d) / f"part-{e.index}.sqlite3"
            copy.write_bytes(packs.chunk(e))
            out.append(logical_digest(copy))
        packs.close()
        return out
