"""Long exactly-once crash loop: SIGKILL the Kafka -> Kafka flow 50 times, then check.

    .venv/bin/python scripts/crashloop_kafka.py [--kills 50] [--records 20000] [--seed 1] [--json]

Starts a Tansu broker, fills a 2-partition input topic, runs the harness flow
(tests/test_kafka_harness.py: Kafka source -> parse -> TransactionalWriter,
epochs of 150 ms, recovery directory) as a subprocess, kills it with SIGKILL
a seeded random 0.05-1 s after each run's first record, restarts it from the
recovery directory, and at the end compares the read_committed output with
the input: exit 0 when no record is lost and none is duplicated.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.kafka import KafkaBroker, create_topic, free_port, read_topic  # noqa: E402
from tests.test_kafka_harness import (  # noqa: E402
    crash_loop,
    event_id_counts,
    orders_crash_loop,
    produce_orders,
)


def run_harness(b: str, work: Path, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    src, out, dlq = create_topic(b, "cl-in", 2), create_topic(b, "cl-out", 2), create_topic(b, "cl-dlq", 1)
    expected = produce_orders(b, src, args.records, 2)
    spec = {
        "source": {"brokers": [b], "topics": [src], "tail": False, "batch-size": 50},
        "sink": {"brokers": [b], "topic": out, "mode": "exactly-once", "transactional-id-prefix": "crashloop"},
        "dlq": {"type": "kafka", "brokers": [b], "topic": dlq},
        "throttle_ms": 2,
        "epoch_ms": 150,
    }
    result = crash_loop(spec, work, kills=args.kills, seed=args.seed, log=log, final_timeout_s=600)
    counts = event_id_counts(read_topic(b, out, partitions=2, timeout_s=120))
    return {
        "kills": result.kills, "runs": result.runs, "expected": len(expected), "output": sum(counts.values()),
        "lost": len(expected - set(counts)), "duplicated": sum(c - 1 for c in counts.values() if c > 1),
        "unexpected": len(set(counts) - expected),
    }


def run_orders(b: str, work: Path, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    run = orders_crash_loop(b, work, records=args.records, kills=args.kills, seed=args.seed, log=log)
    return {
        "kills": run.result.kills, "runs": run.result.runs, "expected": sum(run.want.values()),
        "output": sum(run.got.values()), "lost": sum(run.lost.values()), "duplicated": sum(run.extra.values()),
        "unexpected": 0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flow", choices=("orders", "harness"), default="orders")
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--records", type=int, help="input records (default: enough work for --kills)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.records is None:
        args.records = max(3000, args.kills * (400 if args.flow == "orders" else 600))
    if args.kills < 0 or args.records < 1:
        ap.error("--kills must be >= 0 and --records >= 1")
    work = Path(tempfile.mkdtemp(prefix="sf-crashloop-"))
    broker = KafkaBroker(port=free_port(), log_path=work / "tansu.log")
    broker.start()
    t0 = time.monotonic()
    log = None if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        report = (run_orders if args.flow == "orders" else run_harness)(broker.bootstrap, work, args, log)
    finally:
        broker.stop()
    report["ok"] = not (report["lost"] or report["duplicated"] or report["unexpected"])
    report.update(flow=args.flow, seconds=round(time.monotonic() - t0, 1), workdir=str(work))
    print(json.dumps(report) if args.json else
          f"{args.flow}: {report['kills']} kills, {report['runs']} runs: {report['output']} records out "
          f"(expected {report['expected']}), lost {report['lost']}, duplicated {report['duplicated']} "
          f"-> {'OK' if report['ok'] else 'FAIL'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
