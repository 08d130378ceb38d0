"""Run the orders or sessions pipeline over a fixed input with a recovery directory (no tests here).

Used by tests/test_lane_state_compat.py with the code of another commit first
on `sys.path` (PYTHONPATH), so it imports only what every version has:
`build_flow(cfg, source=, sink=, dlq_sink=, ...)`, `dataflows.config.load_config`,
`dataflows.events.RawRecord`. Writes `<sink> <repr>` per output item to `--out`, sink by sink.

    python tests/lane_compat_flow.py orders --config C --recovery DIR --upto N --out OUT
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from datetime import timedelta
from pathlib import Path

from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSink, TestingSource, run_main

BASE_MS = 1_700_000_000_000


def orders_records(n: int) -> list[dict[str, object]]:
    """Order events over 7 orders: updates, no-op repeats, redeliveries (same id), deletes."""
    out: list[dict[str, object]] = []
    for i in range(n):
        k = i % 7
        rec: dict[str, object] = {"order_id": f"o{k}", "event_id": f"e{i}", "ts": BASE_MS + i * 1000,
                                  "status": ("new", "paid", "shipped")[(i // 7) % 3], "amount": k * 10 + i // 7,
                                  "address": {"city": ("Lyon", "Oslo")[i % 2]}}
        if i % 11 == 5:
            rec["event_id"] = f"e{i - 7}"  # a redelivery of the order's previous event
        if i % 13 == 12:
            rec["op"] = "delete"
        out.append(rec)
    return out


def clicks_records(n: int) -> list[dict[str, object]]:
    """Clicks of 5 users, with gaps that close sessions and redeliveries."""
    out: list[dict[str, object]] = []
    for i in range(n):
        u = i % 5
        t = BASE_MS + i * 20_000 + (600_000 if i > n // 2 else 0)
        eid = f"c{i - 5}" if i % 9 == 4 else f"c{i}"
        out.append({"user_id": f"u{u}", "event_id": eid, "ts": t, "action": ("view", "buy")[i % 2],
                    "page": f"p{i % 3}"})
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("pipeline", choices=("orders", "sessions"))
    p.add_argument("--config", required=True)
    p.add_argument("--recovery")
    p.add_argument("--upto", type=int, required=True, help="input records to read (of the fixed list)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from dataflows.config import load_config
    from dataflows.events import RawRecord

    records = orders_records(60) if args.pipeline == "orders" else clicks_records(60)
    raws = [RawRecord(json.dumps(r).encode(), f"test:0:{i}", "test", timestamp_ms=BASE_MS)
            for i, r in enumerate(records[: args.upto])]
    module = importlib.import_module(f"dataflows.pipelines.{args.pipeline}")
    outs: dict[str, list[object]] = {"sink": [], "dlq_sink": []}
    if args.pipeline == "orders":
        outs["changes_sink"] = []
    sinks = {name: TestingSink(items) for name, items in outs.items()}
    flow = module.build_flow(load_config(args.config), source=TestingSource(raws, batch_size=3), **sinks)
    rc = RecoveryConfig(args.recovery) if args.recovery else None
    run_main(flow, epoch_interval=timedelta(0), recovery_config=rc)
    Path(args.out).write_text("".join(f"{name} {_plain(x)!r}\n" for name, items in outs.items()
                                      for x in items))
    return 0


def _plain(item: object) -> object:
    """What to compare of an output item: dead letters without their times and traces."""
    if type(item).__name__ == "DeadLetter":
        return ("DeadLetter", getattr(item, "error_code", None), getattr(item, "event_id", None))
    return item


if __name__ == "__main__":
    sys.path.insert(0, str(Path.cwd()))
    raise SystemExit(main())
