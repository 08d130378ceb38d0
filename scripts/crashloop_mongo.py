"""Crash-loop the customers_cdc pipeline against the MongoDB test server.

    .venv/bin/python scripts/crashloop_mongo.py [--kills 20] [--seed 7] [--resync-docs 3000]
                                                [--roll-oplog] [--workdir DIR] [--json]

Starts the wire-level test server in this process, runs the pipeline as a
subprocess (`python -m bytewax.run dataflows.pipelines.customers_cdc:flow
-r DIR -s 1 -b 0`) while a seeded workload changes the source collection,
SIGKILLs it `--kills` times at seeded random moments (with `--roll-oplog`,
the oplog is rolled over while it is down every other time, forcing a
re-sync), then waits until the target collection equals the source.
Exit 0 and a summary when it converges; exit 1 with the pipeline log when not.
The same loop runs in CI (tests/test_mongo_pipeline.py, 5 kills).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pymongo import MongoClient  # noqa: E402

from tests.mongo_server import MongoTestServer  # noqa: E402
from tests.mongo_server.harness import crash_loop  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs (default 20)")
    ap.add_argument("--seed", type=int, default=7, help="seed of kill times and workload")
    ap.add_argument("--resync-docs", type=int, default=0,
                    help="start with this many documents: the first start re-syncs them, throttled")
    ap.add_argument("--roll-oplog", action="store_true", help="roll the oplog over while down (every other kill)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to converge after the last kill")
    ap.add_argument("--workdir", type=Path, default=None, help="run directory (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    if args.kills < 1 or args.resync_docs < 0:
        ap.error("--kills must be >= 1 and --resync-docs >= 0")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crashloop_mongo_"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = MongoTestServer(oplog_size=20_000).start()
    client: MongoClient[dict] = MongoClient(server.uri)
    print(f"crash loop: {args.kills} kills, seed {args.seed}, workdir {workdir}", file=sys.stderr)
    try:
        summary = crash_loop(client.crashloop, server.uri, workdir, seed=args.seed, kills=args.kills,
                             resync_docs=args.resync_docs,
                             roll_oplog=server.roll_oplog if args.roll_oplog else None,
                             converge_timeout=args.timeout)
    except AssertionError as exc:
        print(f"NOT CONVERGED: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
        server.stop()
    summary["converged"] = True
    summary["workdir"] = str(workdir)
    print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
