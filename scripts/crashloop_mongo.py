"""Crash-loop the customers_cdc pipeline against the MongoDB test server.

    .venv/bin/python scripts/crashloop_mongo.py [--kills 20] [--seed 7] [--resync-docs 800]
                                                [--roll-oplog] [--simple] [--workdir DIR] [--json]

Starts the wire-level test server in this process, runs the pipeline as a
subprocess (`python -m bytewax.run dataflows.pipelines.customers_cdc:flow
-r DIR -s 1 -b 0`) while a seeded workload changes the source collection,
SIGKILLs it `--kills` times at seeded random moments (with `--roll-oplog`,
the oplog is rolled over while it is down every other time, forcing a
re-sync, and rolled again while that re-sync scans), then waits until the
target collection equals the source. By default the workload is the hard one
(issue 10): `_id`s mixing strings, int32, int64 above 2**53 and ObjectIds,
documents near the 16 MiB limit, deletes re-inserted at once under the same
`_id`, a throttled re-sync of `--resync-docs` documents, and oplog rolls both
while stopped and during a re-sync; `--simple` runs the old string-_id loop.
Exit 0 and a summary when it converges; exit 1 with the pipeline log when not.
The same loop runs in CI (tests/test_mongo_pipeline.py, 5 kills).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
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
    ap.add_argument("--resync-docs", type=int, default=None,
                    help="start with this many documents: the first start re-syncs them, throttled")
    ap.add_argument("--roll-oplog", action="store_true", help="roll the oplog over while down (every other kill)")
    ap.add_argument("--simple", action="store_true",
                    help="string _ids only, no big documents, no rolls unless --roll-oplog")
    ap.add_argument("--big-docs", type=int, default=2, help="keys sometimes written near 16 MiB (default 2)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to converge after the last kill")
    ap.add_argument("--workdir", type=Path, default=None, help="run directory (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    hard = not args.simple
    resync_docs = args.resync_docs if args.resync_docs is not None else (800 if hard else 0)
    if args.kills < 1 or resync_docs < 0 or args.big_docs < 0:
        ap.error("--kills must be >= 1, --resync-docs and --big-docs >= 0")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crashloop_mongo_"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = MongoTestServer(oplog_size=20_000).start()
    client: MongoClient[dict] = MongoClient(server.uri)
    started = time.monotonic()
    print(f"crash loop: {args.kills} kills, seed {args.seed}, workdir {workdir}", file=sys.stderr)
    try:
        summary = crash_loop(client.crashloop, server.uri, workdir, seed=args.seed, kills=args.kills,
                             resync_docs=resync_docs,
                             roll_oplog=server.roll_oplog if args.roll_oplog or hard else None,
                             converge_timeout=args.timeout, mixed_ids=hard,
                             big_docs=args.big_docs if hard else 0, roll_during_resync=hard)
    except AssertionError as exc:
        print(f"NOT CONVERGED: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
        server.stop()
    summary["converged"] = True
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["workdir"] = str(workdir)
    print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
