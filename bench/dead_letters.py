"""What a dead letter costs: the orders pipeline at 0% and at N% bad records.

Runs `dataflows.pipelines.orders.build_flow` in memory on 1 worker:
`TestingSource(records, batch_size=1000)` -> the whole orders flow -> counting
sinks (table, changes, DLQ). The records are valid order events from
`dataflows.generate.generate_orders`; for the bad run, every
`1/bad_fraction`-th record is replaced by a truncated copy of itself
(`MALFORMED_JSON`: a dead letter with a chained exception, as in real input).
Rates are records per CPU second of the process (robust to a busy machine),
best of `--repeats`, runs alternating good / bad.

`dead_letter_cost_events` is the extra time of the bad run per dead letter,
in units of one good event's time: ~1 means a dead letter costs about what an
event costs (a bad record also skips dedup, merge and materialize). On a busy
machine the two flow runs are noisy; the step itself is measured apart too:
`parse_us_good` (one good record through `parse_record`) and
`parse_us_bad_with_dead_letter` (a bad record: `parse_record` raising, plus
its `dead_letter`, stack trace included), best of 5 over the same records.

    .venv/bin/python bench/dead_letters.py --json
    .venv/bin/python bench/dead_letters.py --events 50000 --bad 0.03
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

from bytewax.testing import TestingSource, run_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.patterns import CountSink  # noqa: E402
from dataflows.config import load_config  # noqa: E402
from dataflows.dead_letter import dead_letter  # noqa: E402
from dataflows.events import RawRecord, file_event_id  # noqa: E402
from dataflows.generate import generate_orders  # noqa: E402
from dataflows.parse import ParseError, parse_record  # noqa: E402
from dataflows.pipelines import orders  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def build_records(n: int, bad_fraction: float, seed: int = 11) -> list[RawRecord]:
    """`n` order records; every `round(1 / bad_fraction)`-th one truncated (bad JSON)."""
    gen = generate_orders(n * 2, seed)
    lines = [line for line, kind in zip(gen.lines, gen.line_kinds, strict=True)
             if kind in ("valid", "out_of_order")][:n]
    every = round(1 / bad_fraction) if bad_fraction > 0 else 0
    records = []
    for i, line in enumerate(lines, 1):
        payload = line[: len(line) // 2] if every and i % every == 0 else line
        records.append(RawRecord(payload, file_event_id("bench.jsonl", i), "file:bench.jsonl",
                                 coords={"path": "bench.jsonl", "line": i}))
    return records


def run_once(records: list[RawRecord]) -> tuple[float, int]:
    """(records per CPU second, dead letters) of one execution of the orders flow."""
    cfg = load_config(REPO / "config" / "orders.yaml", environ={})
    sink, changes, dlq = CountSink(), CountSink(), CountSink()
    flow = orders.build_flow(cfg, source=TestingSource(records, batch_size=1000), sink=sink,
                             dlq_sink=dlq, changes_sink=changes)
    gc.collect()
    t0 = time.process_time()
    run_main(flow)
    return len(records) / (time.process_time() - t0), dlq.counter[0]


def parse_step_us(records: list[RawRecord]) -> float:
    """CPU microseconds per record of the parse step, dead letters built (best of 5)."""
    opts = {"key_field": "order_id", "time_field": "ts", "op_field": "op", "max_record_bytes": 16384,
            "required": {"event_id": str}, "optional": orders.OPTIONAL_TYPES}
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for r in records:
            try:
                parse_record(r, **opts)
            except ParseError as exc:
                dead_letter(r, code=exc.error_code, stage="bench.parse", pipeline="bench", exc=exc)
        best = min(best, (time.process_time() - t0) / len(records) * 1e6)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--bad", type=float, default=0.03, help="fraction of bad records (default 0.03)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print JSON only")
    args = p.parse_args(argv)
    good, bad = build_records(args.events, 0.0), build_records(args.events, args.bad)
    best_good = best_bad = 0.0
    letters = 0
    for r in range(args.repeats):
        rate_good, _ = run_once(good)
        rate_bad, letters = run_once(bad)
        best_good, best_bad = max(best_good, rate_good), max(best_bad, rate_bad)
        if not args.json:
            print(f"#{r + 1}: {rate_good:,.0f} rec/s at 0%, {rate_bad:,.0f} rec/s at {args.bad:.0%}",
                  file=sys.stderr)
    extra_s = args.events / best_bad - args.events / best_good
    sample = good[:2000]
    truncated = [RawRecord(r.payload[: len(r.payload) // 2], r.event_id, r.source) for r in sample]
    us_good, us_bad = parse_step_us(sample), parse_step_us(truncated)
    doc = {
        "events": args.events,
        "bad_fraction": args.bad,
        "dead_letters": letters,
        "events_per_s_0pct": round(best_good),
        "events_per_s_bad": round(best_bad),
        "ratio_bad_vs_0pct": round(best_bad / best_good, 3),
        "dead_letter_cost_events": round(extra_s / letters * best_good, 1) if letters else None,
        "parse_us_good": round(us_good, 1),
        "parse_us_bad_with_dead_letter": round(us_bad, 1),
        "dead_letter_vs_good_parse": round(us_bad / us_good, 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
