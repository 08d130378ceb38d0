"""`streamforge generate orders|sessions`: deterministic sample data (dataflows.generate)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from streamforge_ops.cli import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="write deterministic sample JSONL input (with duplicates, late and malformed lines)",
        description=(
            "Write COUNT lines of sample input for a pipeline to --out. The same --seed gives "
            "the same bytes. The data holds duplicates, out-of-order and too-late events and "
            "malformed lines (bad JSON, invalid UTF-8, missing key, wrong types, oversized)."
        ),
    )
    p.add_argument("kind", choices=("orders", "sessions"), help="orders events or click events")
    p.add_argument("--out", required=True, metavar="PATH", help="output JSONL file (overwritten)")
    p.add_argument("--count", type=int, default=5000, metavar="N", help="number of lines (default 5000)")
    p.add_argument("--seed", type=int, default=7, metavar="S", help="random seed (default 7)")
    p.add_argument("--oversized-bytes", type=int, default=20_000, metavar="B",
                   help="size of the oversized records (default 20000)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run)


def _progress(total: int) -> object:
    def wrap(lines: Iterator[bytes]) -> Iterator[bytes]:
        from tqdm import tqdm

        yield from tqdm(lines, total=total, unit="line", file=sys.stderr,
                        disable=not sys.stderr.isatty() or total < 100_000)

    return wrap


def _run(args: argparse.Namespace) -> int:
    from dataflows.generate import write_dataset

    if args.count < 1:
        raise CliError(f"--count must be >= 1, got {args.count}")
    if args.oversized_bytes < 1:
        raise CliError(f"--oversized-bytes must be >= 1, got {args.oversized_bytes}")
    try:
        summary = write_dataset(args.kind, args.out, count=args.count, seed=args.seed,
                                oversized_bytes=args.oversized_bytes, progress=_progress(args.count))  # type: ignore[arg-type]
    except OSError as exc:
        raise CliError(f"cannot write {args.out}: {exc}") from None
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        kinds = ", ".join(f"{k} {v}" for k, v in summary["lines_by_kind"].items())
        print(f"wrote {summary['count']} {args.kind} lines ({summary['bytes']} bytes) to "
              f"{summary['path']}: {kinds}")
    return 0
