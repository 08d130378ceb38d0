"""Benchmark of the recovery package (one run, ratios against a baseline of the same run).

1. Throughput of a stateful flow over 100,000 keys without recovery vs with
   recovery (10 s epochs, Bytewax's default) and an incremental checkpoint
   every 10 s from a background thread; also with recovery but no checkpoint,
   to separate Bytewax's own snapshot cost from the checkpoints'
   (the flow runs in a child process, as under the supervisor: a flow and the
   checkpointer must not share a process, see recovery/partitions.py).
2. A full and an incremental checkpoint (1% of the keys changed) of
   1,000,000 keys, to S3 (moto server over HTTP): bytes of each.
3. Restore of that state from S3 and a resumed run up to its first output.

Usage: ``python bench/checkpoint.py [--json] [--events N] [--big-keys N]``.
Prints ``{"overhead_ratio", "full_bytes", "incremental_bytes",
"incremental_fraction", "restore_seconds", ...}``.
Targets: overhead_ratio >= 0.85, incremental_fraction <= 0.05, restore_seconds <= 10.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recovery.checkpoint import take_checkpoint  # noqa: E402
from recovery.partitions import init_partitions  # noqa: E402
from recovery.restore import restore  # noqa: E402
from recovery.store import ObjectStore, open_store  # noqa: E402

PIPE = "bench"


class Items:
    """Re-iterable ``(key, 1)`` items: `n` events over `keys` keys from `start`."""

    def __init__(self, n: int, keys: int, offset: int = 0) -> None:
        self.n, self.keys, self.offset = n, keys, offset

    def __iter__(self) -> Iterator[tuple[str, int]]:
        keys, offset = self.keys, self.offset
        for i in range(self.n):
            yield (f"k{(i + offset) % keys}", 1)


class Chain:
    """Several `Items` one after the other (each run appends a segment)."""

    def __init__(self, parts: list[Items]) -> None:
        self.parts = parts

    def __iter__(self) -> Iterator[tuple[str, int]]:
        for p in self.parts:
            yield from p


def _child(args: argparse.Namespace) -> None:
    """Run the flow (in a child process) and report timings on stdout."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.recovery import RecoveryConfig
    from bytewax.testing import TestingSource, run_main

    started = time.time()

    class FirstOutput(StatelessSinkPartition):
        seen = False

        def write_batch(self, items: list) -> None:
            if not FirstOutput.seen and items:
                FirstOutput.seen = True
                print(f"FIRST {time.time()}", flush=True)

    class Sink(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> FirstOutput:
            return FirstOutput()

    segs = [Items(*map(int, s.split(":"))) for s in args.segments.split(",")]
    flow = Dataflow("bench")
    stream = op.input("inp", flow, TestingSource(Chain(segs), batch_size=1000))

    def add(state: int | None, value: int) -> tuple[int, int]:
        total = (state or 0) + value
        return total, total

    op.output("out", op.stateful_map("sum", stream, add), Sink())
    rc = None
    if args.recovery_dir:
        rc = RecoveryConfig(args.recovery_dir, backup_interval=timedelta(seconds=120))
    t0 = time.perf_counter()
    run_main(flow, epoch_interval=timedelta(seconds=args.epoch_s), recovery_config=rc)
    print(f"ELAPSED {time.perf_counter() - t0} {started}", flush=True)


def _run_flow(segments: str, recovery_dir: Path | None, epoch_s: float = 2.0) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--child", "--segments", segments, "--epoch-s", str(epoch_s)]
    if recovery_dir:
        cmd += ["--recovery-dir", str(recovery_dir)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)


def _elapsed(proc: subprocess.Popen[str]) -> float:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"flow failed ({proc.returncode})")
    line = next(li for li in out.splitlines() if li.startswith("ELAPSED"))
    return float(line.split()[1])


def bench_overhead(tmp: Path, events: int, keys: int, interval_s: float, epoch_s: float) -> dict:
    segments = f"{events}:{keys}:0"
    without = events / _elapsed(_run_flow(segments, None, epoch_s))
    plain = tmp / "recovery-only"
    init_partitions(plain, 4)
    recovery_only = events / _elapsed(_run_flow(segments, plain, epoch_s))
    rd = tmp / "overhead"
    init_partitions(rd, 4)
    store = open_store(f"file://{tmp}/overhead-store")
    taken: list = []
    failures: list = []
    stop = threading.Event()

    def checkpointer() -> None:
        while not stop.wait(interval_s):
            try:
                taken.append(take_checkpoint(rd, store, pipeline=PIPE, incremental=True))
            except Exception as exc:
                failures.append(str(exc))

    thread = threading.Thread(target=checkpointer, daemon=True)
    proc = _run_flow(segments, rd, epoch_s)
    thread.start()
    try:
        with_ = events / _elapsed(proc)
    finally:
        stop.set()
        thread.join()
    return {
        "throughput_without": round(without),
        "throughput_recovery_only": round(recovery_only),
        "throughput_with": round(with_),
        "overhead_ratio": round(with_ / without, 3),
        "recovery_only_ratio": round(recovery_only / without, 3),
        "checkpoint_overhead_ratio": round(with_ / recovery_only, 3),
        "checkpoints_during_run": len(taken),
        "checkpoint_failures": failures,
    }


def _moto() -> tuple[object, str]:
    from tests.fixtures.s3 import MotoS3, make_bucket

    for k, v in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(k, v)
    server = MotoS3()
    server.start()
    return server, make_bucket(server.endpoint_url)


def bench_big(tmp: Path, big_keys: int, partitions: int, store: ObjectStore) -> dict:
    rd = tmp / "big"
    init_partitions(rd, partitions)
    first = f"{big_keys}:{big_keys}:0"
    build_s = _elapsed(_run_flow(first, rd, epoch_s=10))
    t0 = time.perf_counter()
    full = take_checkpoint(rd, store, pipeline=PIPE, incremental=True)
    full_s = time.perf_counter() - t0
    changed = big_keys // 100
    second = f"{first},{changed}:{big_keys}:0"
    _elapsed(_run_flow(second, rd, epoch_s=10))
    t0 = time.perf_counter()
    inc = take_checkpoint(rd, store, pipeline=PIPE, incremental=True)
    inc_s = time.perf_counter() - t0
    assert inc.parent_id == full.id

    target = tmp / "restored"
    t0 = time.time()
    result = restore(
        target,
        checkpoint_store=store,
        savepoint_store=store,
        pipeline=PIPE,
        partition_count=partitions,
    )
    restored_s = time.time() - t0
    proc = _run_flow(f"{second},1:1:0", target, epoch_s=10)
    out, _ = proc.communicate()
    first_output = next(float(li.split()[1]) for li in out.splitlines() if li.startswith("FIRST"))
    return {
        "keys": big_keys,
        "partitions": partitions,
        "build_seconds": round(build_s, 2),
        "full_bytes": full.total_bytes,
        "full_seconds": round(full_s, 2),
        "incremental_bytes": inc.total_bytes,
        "incremental_seconds": round(inc_s, 2),
        "incremental_fraction": round(inc.total_bytes / full.total_bytes, 4),
        "restored": f"{result.chosen} {result.id}",
        "restore_download_seconds": round(restored_s, 2),
        "restore_seconds": round(first_output - t0, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--events", type=int, default=2_000_000, help="events for the overhead run")
    parser.add_argument("--keys", type=int, default=100_000, help="keys for the overhead run")
    parser.add_argument("--interval", type=float, default=10.0, help="checkpoint interval, seconds")
    parser.add_argument(
        "--snapshot-s", type=float, default=10.0, help="epoch (snapshot) interval, seconds"
    )
    parser.add_argument("--big-keys", type=int, default=1_000_000, help="keys for full/incremental")
    parser.add_argument(
        "--partitions",
        type=int,
        default=256,
        help="recovery partitions for the big state (Bytewax 0.21.1 loads a partition's "
        "state page by page with a query over the whole partition: resume time grows with "
        "the square of the keys per partition, so keep them ~<= 20k)",
    )
    parser.add_argument("--only", choices=["overhead", "big"], help="run one part only")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--segments", help=argparse.SUPPRESS)
    parser.add_argument("--recovery-dir", help=argparse.SUPPRESS)
    parser.add_argument("--epoch-s", type=float, default=2.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="sf-bench-ckpt-") as d:
        tmp = Path(d)
        result: dict = {}
        if args.only in (None, "overhead"):
            result.update(
                bench_overhead(tmp, args.events, args.keys, args.interval, args.snapshot_s)
            )
            print(json.dumps(result), file=sys.stderr, flush=True)
        if args.only in (None, "big"):
            server, bucket = _moto()
            try:
                url = f"s3://{bucket}/bench"
                store = open_store(url, endpoint_url=server.endpoint_url)  # type: ignore[attr-defined]
                result.update(bench_big(tmp, args.big_keys, args.partitions, store))
            finally:
                server.stop()  # type: ignore[attr-defined]
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28} {v}")


if __name__ == "__main__":
    main()
