"""Throughput of the stateful patterns and the fused orders lane vs. a bare `stateful_map` baseline.

Each pattern runs in its own dataflow on 1 worker: `TestingSource(events,
batch_size=1000)` -> pattern -> counting sink, over pre-built `Event`s. The
baseline, measured in the same run, has the same shape (key_on with the same
key -> `stateful_map` that reads and writes a dict per key -> key_rm), so
the ratio is the cost of the pattern's logic over Bytewax's own per-item
cost. Runs alternate baseline / pattern and the best of `--repeats` counts.
Rates are events per CPU second of the process (robust to a busy machine).

Garbage collector: the patterns run with the pipeline process's setting
(`dataflows.gc_tuning.tune_gc`, what every pipeline process sets once its flow
is built; `gc_threshold` in the JSON), as in `bench/kafka.py`. The baseline is
measured both ways: `baseline_events_per_s` with CPython's default collector
(the bare `stateful_map` as Bytewax runs it; `ratio`) and
`baseline_same_gc_events_per_s` with the bench's (`ratio_same_gc`).
`--default-gc` runs everything with CPython's default instead (then both
baselines are the same run).

`lane` is the orders pipeline's keyed lane (`dataflows.flow.orders_lane`:
dedup by event id, merge and materialize in one stateful step per key; the
bench events carry no `event_id` field, so each event's own id is its identity).

`dedup` and `sessions` run with their default `shards=64` (64 Bytewax keys,
one pending wake-up each). `--variants` adds the same patterns without
wall-clock wake-ups (dedup `expire_idle=False`, sessions
`advance_on_idle=False`), with a Bytewax key and wake-up per key
(`*_per_key`, `shards=None`) and the sharded sweep materializer: the
difference is Bytewax's cost of pending `notify_at` wake-ups (its Rust core
scans every key's pending wake-up on each activation, so at 100k keys the
scan, not the pattern logic, dominates). `--shards 16,256` adds
`dedup_shards_N` / `sessions_shards_N`; `--recovery-epoch-ms MS` runs every
flow (the baseline too) with recovery on and an epoch (a snapshot of every
key touched in it: whole shards) each MS ms. It
also adds the floor of any keyed batch logic: `bare_batch` (count and pass
through, the same wiring as the patterns) and `bare_timer` (the same, holding
one far-away pending wake-up per key, as dedup and sessions must for their
idle expiry): no pattern with a wake-up per key can beat `bare_timer`; and
`bare_lane` (the orders lane's wiring and output shape, a Change and a
TableChange per event, without its logic): the floor of `lane`.

    .venv/bin/python bench/patterns.py --json
    .venv/bin/python bench/patterns.py --events 50000 --keys 10000
    .venv/bin/python bench/patterns.py --json --only bare_batch --only bare_timer
    .venv/bin/python bench/patterns.py --json --only dedup --only dedup_per_key --recovery-epoch-ms 2000
    .venv/bin/python bench/patterns.py --json --only lane --only bare_lane --default-gc
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, run_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataflows.events import Event  # noqa: E402
from dataflows.flow import (  # noqa: E402
    analyze_sessions,
    deduplicate,
    key_batch,
    materialize,
    merge_changes,
    orders_lane,
    split_by_type,
    unkey_batch,
)
from dataflows.gc_tuning import tune_gc  # noqa: E402
from dataflows.patterns.materializer import TableChange  # noqa: E402
from dataflows.patterns.merger import Change  # noqa: E402

PIPELINE = "bench"
STATUSES = ("new", "paid", "packed", "shipped", "delivered")
CITIES = ("Lyon", "Oslo", "Kyiv", "Lima", "Pune")


class _CountPartition(StatelessSinkPartition[Any]):
    def __init__(self, counter: list[int]) -> None:
        self.counter = counter

    def write_batch(self, items: list[Any]) -> None:
        self.counter[0] += len(items)


class CountSink(DynamicSink[Any]):
    """Counts output items (no per-item storage)."""

    def __init__(self) -> None:
        self.counter = [0]

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountPartition:
        return _CountPartition(self.counter)


def build_events(n: int, keys: int, seed: int = 7) -> list[Event]:
    """`n` events over `keys` keys: random keys, mostly increasing event times, small documents.

    Keys repeat (dedup drops ~half as repeats within its TTL); times are
    `10 ms * i` minus up to 5 s of jitter (out of order within lateness);
    documents change one or two nested fields per event.
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randrange(keys)
        doc = {
            "order_id": f"o{k}",
            "status": STATUSES[(i // keys) % 5],
            "amount": (k * 13 + i // keys) % 1000,
            "address": {"city": CITIES[k % 5], "zip": f"{k % 100000:05d}"},
            "items": [{"sku": f"s{k % 50}", "qty": 1 + (i // keys) % 3}],
        }
        out.append(Event(f"k{k}", doc, i * 10 - rng.randrange(5000), f"bench:0:{i}", "bench"))
    return out


def _event_key(e: Event) -> str:
    return e.key


def _dict_mapper(state: dict[str, Any] | None, e: Event) -> tuple[dict[str, Any], Event]:
    if state is None:
        state = {"n": 0}
    state["n"] += 1
    state["last"] = e.event_time_ms
    return state, e


def baseline(up: Stream[Event], key: Callable[[Event], str]) -> Stream[Any]:
    keyed = op.key_on("key", up, key)
    return op.key_rm("unkey", op.stateful_map("baseline", keyed, _dict_mapper))


def _dedup(up: Stream[Event]) -> Stream[Any]:
    return deduplicate("dedup", up, ttl_ms=600_000, pipeline=PIPELINE)


def _merger(up: Stream[Event]) -> Stream[Any]:
    return merge_changes("merge", up, pipeline=PIPELINE)


def _sessions(up: Stream[Event]) -> Stream[Any]:
    out = analyze_sessions("sessions", up, gap_ms=900_000, allowed_lateness_ms=60_000,
                           pipeline=PIPELINE)
    return op.merge("both", out.sessions, out.late)


def _materializer(up: Stream[Event]) -> Stream[Any]:
    return materialize("materialize", up, pipeline=PIPELINE)


def _lane(up: Stream[Event]) -> Stream[Any]:
    out = orders_lane("lane", up, pipeline=PIPELINE, ttl_ms=600_000, id_field="event_id",
                      with_changes=True, merge_step="bench.merge", materialize_step="bench.materialize")
    assert out.changes is not None
    return op.merge("both", out.table, out.changes)


def _dedup_no_expiry(up: Stream[Event]) -> Stream[Any]:
    return deduplicate("dedup", up, ttl_ms=600_000, pipeline=PIPELINE, expire_idle=False)


def _dedup_shards(shards: int | None) -> Callable[[Stream[Event]], Stream[Any]]:
    def body(up: Stream[Event]) -> Stream[Any]:
        return deduplicate("dedup", up, ttl_ms=600_000, pipeline=PIPELINE, shards=shards)

    return body


def _sessions_shards(shards: int | None, idle: bool = True) -> Callable[[Stream[Event]], Stream[Any]]:
    def body(up: Stream[Event]) -> Stream[Any]:
        out = analyze_sessions("sessions", up, gap_ms=900_000, allowed_lateness_ms=60_000,
                               pipeline=PIPELINE, advance_on_idle=idle, shards=shards)
        return op.merge("both", out.sessions, out.late)

    return body


def _materializer_sweep(up: Stream[Event]) -> Stream[Any]:
    return materialize("materialize", up, pipeline=PIPELINE, sweep=True)


_FAR = datetime(2100, 1, 1, tzinfo=UTC)


class _BareLogic(op.StatefulBatchLogic[Event, Event, int]):
    """The least a keyed `stateful_batch` logic does: count, pass the events through.

    With `timer=True` it also holds one pending wake-up (far away, asked for
    once) like the TTL / idle-session patterns do: the difference between
    `bare_batch` and `bare_timer` is what Bytewax's per-key timers cost alone.
    """

    __slots__ = ("n", "armed", "timer")

    def __init__(self, timer: bool) -> None:
        self.n, self.armed, self.timer = 0, False, timer

    def on_batch(self, events: list[Event]) -> tuple[list[Event], bool]:  # type: ignore[override]
        self.n += len(events)
        return events, False

    def on_notify(self) -> tuple[tuple[()], bool]:
        return (), False

    def on_eof(self) -> tuple[tuple[()], bool]:
        return (), False

    def notify_at(self) -> datetime | None:
        if self.timer and not self.armed:
            self.armed = True
            return _FAR
        return None

    def snapshot(self) -> int:
        return self.n


_CHANGE = Change("updated", "k", {}, {}, ("x",), "e/bench.merge", 0)
_TABLE = TableChange("upsert", "k", {}, "e/bench.materialize", 0)


class _BareLaneLogic(_BareLogic):
    """`bare_batch` with the orders lane's output shape: a Change and a TableChange per event
    (the same two prebuilt records: no allocation, no pattern logic)."""

    __slots__ = ()

    def on_batch(self, events: list[Event]) -> tuple[list[Any], bool]:  # type: ignore[override]
        self.n += len(events)
        return [_CHANGE, _TABLE] * len(events), False


def _bare_lane(up: Stream[Event]) -> Stream[Any]:
    """The orders lane's wiring (`orders_lane`, with changes, no hook) around `_BareLaneLogic`."""
    def build(_state: int | None) -> _BareLaneLogic:
        return _BareLaneLogic(False)

    out = unkey_batch("unkey", op.stateful_batch("bare", key_batch("key", up), build))
    table = split_by_type("table", out, TableChange)
    op.flat_map_batch("no_dlq", table.falses, lambda _b: [])
    return op.merge("both", table.trues, table.falses)


def _bare(timer: bool) -> Callable[[Stream[Event]], Stream[Any]]:
    def body(up: Stream[Event]) -> Stream[Any]:
        def build(_state: int | None) -> _BareLogic:
            return _BareLogic(timer)

        return unkey_batch("unkey", op.stateful_batch("bare", key_batch("key", up), build))

    return body


# Same patterns without wall-clock wake-ups (each key with a pending wake-up costs a scan
# step per activation inside Bytewax), with a Bytewax key (and wake-up) per key
# (shards=None, the layout before shards=64 became the default), and the sharded
# generation-sweep materializer.
VARIANTS: dict[str, Callable[[Stream[Event]], Stream[Any]]] = {
    "dedup_no_expiry": _dedup_no_expiry,
    "dedup_per_key": _dedup_shards(None),
    "sessions_no_idle_close": _sessions_shards(None, idle=False),
    "sessions_per_key": _sessions_shards(None),
    "materializer_sweep": _materializer_sweep,
    "bare_batch": _bare(False),
    "bare_timer": _bare(True),
    "bare_lane": _bare_lane,
}

PATTERNS: dict[str, Callable[[Stream[Event]], Stream[Any]]] = {
    "dedup": _dedup,
    "merger": _merger,
    "sessions": _sessions,
    "materializer": _materializer,
    "lane": _lane,
}


def shard_variants(counts: list[int]) -> dict[str, Callable[[Stream[Event]], Stream[Any]]]:
    """`dedup_shards_N` / `sessions_shards_N` for each N of `--shards`."""
    out: dict[str, Callable[[Stream[Event]], Stream[Any]]] = {}
    for n in counts:
        out[f"dedup_shards_{n}"] = _dedup_shards(n)
        out[f"sessions_shards_{n}"] = _sessions_shards(n)
    return out


def run_once(events: list[Event], body: Callable[[Stream[Event]], Stream[Any]],
             epoch_ms: int | None = None) -> tuple[float, int]:
    """(events per CPU second, output count) of one execution.

    CPU time of this process (`time.process_time`, all threads), not wall
    time: the figure then holds on a shared, busy machine. `epoch_ms`: with
    recovery on (a fresh SQLite partition, an epoch, i.e. a snapshot of every
    key touched in it, each `epoch_ms`); None: recovery off.
    """
    flow = Dataflow("bench")
    src = op.input("in", flow, TestingSource(events, batch_size=1000))
    sink = CountSink()
    op.output("out", body(src), sink)
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="bench-patterns-") as tmp:
        kw: dict[str, Any] = {}
        if epoch_ms is not None:
            init_db_dir(Path(tmp), 1)
            kw = {"epoch_interval": timedelta(milliseconds=epoch_ms),
                  "recovery_config": RecoveryConfig(tmp)}
        t0 = time.process_time()
        run_main(flow, **kw)
        dt = time.process_time() - t0
    return len(events) / dt, sink.counter[0]


_DEFAULT_GC = (700, 10, 10)  # CPython's


def _baseline_body(up: Stream[Event]) -> Stream[Any]:
    return baseline(up, _event_key)


def run_default_gc(events: list[Event], body: Callable[[Stream[Event]], Stream[Any]],
                   epoch_ms: int | None) -> tuple[float, int]:
    """`run_once` with CPython's default collector thresholds, then the bench's again."""
    current = gc.get_threshold()
    gc.set_threshold(*_DEFAULT_GC)
    try:
        return run_once(events, body, epoch_ms)
    finally:
        gc.set_threshold(*current)


def bench(events: list[Event], bodies: dict[str, Callable[[Stream[Event]], Stream[Any]]],
          repeats: int, progress: Callable[[str], None],
          epoch_ms: int | None = None) -> dict[str, dict[str, float]]:
    """Each body and the baseline, interleaved, best of `repeats` each (module doc: the
    baseline with CPython's collector and, when the bench's differs, with the bench's)."""
    same_gc = gc.get_threshold() != _DEFAULT_GC
    results: dict[str, dict[str, float]] = {}
    for name, body in bodies.items():
        best, best_base, best_same, outputs = 0.0, 0.0, 0.0, 0
        for r in range(repeats):
            base, _ = run_default_gc(events, _baseline_body, epoch_ms)
            same = run_once(events, _baseline_body, epoch_ms)[0] if same_gc else base
            rate, outputs = run_once(events, body, epoch_ms)
            best, best_base, best_same = max(best, rate), max(best_base, base), max(best_same, same)
            progress(f"{name} #{r + 1}: {rate:,.0f} ev/s (baseline {base:,.0f} ev/s,"
                     f" same gc {same:,.0f} ev/s)")
        results[name] = {
            "events_per_s": round(best),
            "baseline_events_per_s": round(best_base),
            "ratio": round(best / best_base, 3),
            "baseline_same_gc_events_per_s": round(best_same),
            "ratio_same_gc": round(best / best_same, 3),
            "outputs": outputs,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=500_000, help="events per run (default 500000)")
    p.add_argument("--keys", type=int, default=100_000, help="distinct keys (default 100000)")
    p.add_argument("--repeats", type=int, default=2, help="runs per side, best counts (default 2)")
    p.add_argument("--shards", default="",
                   help="comma-separated shard counts: adds dedup_shards_N / sessions_shards_N variants")
    p.add_argument("--recovery-epoch-ms", type=int, default=None,
                   help="run everything (baseline too) with recovery on, an epoch each MS ms")
    p.add_argument("--only", action="append",
                   help="bench only these (patterns or variants, including --shards ones)")
    p.add_argument("--variants", action="store_true",
                   help="also bench variants without wake-ups and the sweep materializer")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.add_argument("--default-gc", action="store_true",
                   help="CPython's default collector for every run (not the pipeline process's tune_gc)")
    args = p.parse_args(argv)
    if args.events < 1 or args.keys < 1 or args.repeats < 1:
        p.error("--events, --keys and --repeats must be >= 1")
    try:
        counts = [int(x) for x in args.shards.split(",") if x.strip()]
    except ValueError:
        p.error(f"--shards: expected comma-separated integers, got {args.shards!r}")
    if any(n < 1 for n in counts):
        p.error("--shards: every count must be >= 1")
    bodies = {**PATTERNS, **VARIANTS, **shard_variants(counts)}
    names = args.only or list(PATTERNS)
    unknown = sorted(set(names) - set(bodies))
    if unknown:
        p.error(f"--only: unknown {unknown}; choose from {sorted(bodies)}")
    if args.recovery_epoch_ms is not None and args.recovery_epoch_ms < 1:
        p.error("--recovery-epoch-ms must be >= 1")
    if not 1 <= args.keys <= args.events:
        p.error("--keys must be between 1 and --events")

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    progress(f"building {args.events:,} events over {args.keys:,} keys")
    events = build_events(args.events, args.keys)
    if args.default_gc:
        gc.collect()
        gc.freeze()
    else:
        tune_gc()  # collects and freezes the events too
    epoch_ms = args.recovery_epoch_ms
    results = bench(events, {n: bodies[n] for n in names}, args.repeats, progress, epoch_ms)
    doc: dict[str, Any] = {"events": args.events, "keys": args.keys, "batch_size": 1000,
                           "workers": 1, "rate": "events per CPU second",
                           "recovery_epoch_ms": epoch_ms, "gc_threshold": list(gc.get_threshold()),
                           "patterns": results}
    if args.variants:
        doc["variants"] = bench(events, {**VARIANTS, **shard_variants(counts)}, args.repeats, progress,
                                epoch_ms)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for name, r in {**results, **doc.get("variants", {})}.items():
            print(f"{name:22s} {r['events_per_s']:>10,} ev/s  baseline {r['baseline_events_per_s']:>10,}"
                  f" ev/s  ratio {r['ratio']:.2f} (same gc {r['ratio_same_gc']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
