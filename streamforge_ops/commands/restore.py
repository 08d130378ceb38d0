"""`streamforge restore [latest | checkpoint:ID | savepoint:ID]`: restore state into the recovery dir.

The target is spelled as for `run --restore` (`checkpoint ID` / `savepoint ID`, two
words, still works).

`latest` (the default) runs the restore chain: latest valid checkpoint ->
latest savepoint -> fresh, and says which was chosen and why; `--strict`
refuses to fall back. The local partitions are replaced: stop the pipeline
first (refused while its supervisor runs, unless --force).

A store that cannot be read (after retries) or a missing / changed signing
key fails the restore (exit 2) instead of falling back: `--fresh` discards
the local partitions and starts from empty ones, without the stored state.
"""

from __future__ import annotations

import argparse

from streamforge_ops.cli import CliError
from streamforge_ops.job import add_config_arg, load_job, supervisor_pid
from streamforge_ops.output import emit, progress
from streamforge_ops.restore_steps import add_allow_arg, allowing
from streamforge_ops.restoring import parse_target, prepare, restore_into


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore a checkpoint or savepoint into the recovery dir",
                       description=__doc__.split("\n", 1)[1].strip())
    p.add_argument("what", nargs="?", default="latest", metavar="TARGET",
                   help="latest (default), checkpoint:ID or savepoint:ID")
    p.add_argument("id", nargs="?", metavar="ID", help=argparse.SUPPRESS)  # the old `checkpoint ID`
    add_config_arg(p)
    p.add_argument("--store", metavar="URL", help="override checkpoints.dir and savepoints.dir")
    p.add_argument("--strict", action="store_true", help="fail instead of falling back")
    add_allow_arg(p)
    p.add_argument("--fresh", action="store_true",
                   help="discard the local partitions and create empty ones; the store is not read")
    p.add_argument("--force", action="store_true", help="restore even while a supervisor runs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.what in ("checkpoint", "savepoint") and not args.id:
        raise CliError(f"restore {args.what} needs an ID: restore {args.what}:ID (see `streamforge {args.what} list`)")
    if args.id and args.what not in ("checkpoint", "savepoint"):
        raise CliError(f"restore {args.what} takes no ID: use latest, checkpoint:ID or savepoint:ID")
    target = parse_target(f"{args.what}:{args.id}" if args.id else args.what)
    assert target is not None
    if args.fresh and (target != "latest" or args.strict):
        raise CliError("--fresh starts from empty partitions: it takes no target and no --strict")
    what, ident = ("latest", "") if target == "latest" else target
    job = allowing(load_job(args.config, store=args.store), args)
    pid = supervisor_pid(job)
    if pid is not None and not args.force:
        raise CliError(f"a supervisor of {job.pipeline!r} runs (pid {pid}): stop it first or use --force")
    if args.fresh:
        decision = prepare(job, None, fresh=True)
    else:
        progress(f"restoring {what} {ident} into {job.recovery_dir} ...".replace("  ", " "))
        decision = restore_into(job, job.recovery_dir, target, strict=args.strict)
    emit(decision.to_json(), as_json=args.json, text=decision.describe())
    return 0
