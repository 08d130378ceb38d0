"""`streamforge run PIPELINE`: run a job under the supervisor (see streamforge_ops.supervisor)."""

from __future__ import annotations

import argparse

from streamforge_ops.cli import CliError
from streamforge_ops.cluster import cluster_from_args
from streamforge_ops.job import add_config_arg, load_job
from streamforge_ops.restore_steps import add_allow_arg, allowing
from streamforge_ops.restoring import parse_target
from streamforge_ops.supervisor import RunOptions, Supervisor


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a pipeline: restore, checkpoint, restart on crash, savepoint on SIGTERM",
        description=(
            "Run PIPELINE (config/PIPELINE.yaml, or --config) under the supervisor: restore "
            "its state, start the Bytewax dataflow, checkpoint periodically, restart it after "
            "a crash, serve /metrics /healthz /readyz, savepoint on SIGTERM/SIGINT and print "
            "a summary when bounded input ends."
        ),
    )
    p.add_argument("pipeline", nargs="?", help="pipeline name (config/<name>.yaml)")
    add_config_arg(p)
    p.add_argument("--workers", "-w", type=int, help="worker count (default: pipeline.workers)")
    p.add_argument("--processes", type=int, metavar="N",
                   help="run the dataflow as one Bytewax cluster of N processes on this machine "
                        "(loopback), --workers each; with --addresses: checked against its length")
    p.add_argument("--process-id", metavar="K",
                   help="run process K of a cluster (one supervisor per pod; K or 'ordinal' = the "
                        "host name's -N suffix; default $STREAMFORGE_PROCESS_ID)")
    p.add_argument("--addresses", metavar="H:P;H:P",
                   help="every process's host:port, by process id (default $STREAMFORGE_ADDRESSES)")
    p.add_argument("--store", metavar="URL", help="checkpoint and savepoint store (file://... or s3://...)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--restore", metavar="TARGET",
                       help="latest | checkpoint:ID | savepoint:ID (replaces local partitions)")
    start.add_argument("--no-restore", action="store_true",
                       help="do not consult the store; resume local partitions if any")
    start.add_argument("--fresh", action="store_true",
                       help="discard local partitions and start from scratch (stateless); the way past "
                            "a restore refused for an unreadable store or a missing signing key")
    p.add_argument("--strict", action="store_true", help="fail instead of falling back to an older state")
    add_allow_arg(p)
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if not args.pipeline and not args.config:
        raise CliError("run: give a PIPELINE name or --config FILE")
    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers must be >= 1, got {args.workers}")
    cluster = cluster_from_args(args.processes, args.process_id, args.addresses)
    job = allowing(load_job(args.config, pipeline=args.pipeline, store=args.store), args)
    opts = RunOptions(
        workers=args.workers,
        target=parse_target(args.restore),
        strict=args.strict,
        fresh=args.fresh,
        no_restore=args.no_restore,
        json=args.json,
        cluster=cluster,
    )
    return Supervisor(job, opts).run()
