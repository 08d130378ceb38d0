"""`streamforge checkpoint create|list`: take or list checkpoints of a pipeline's partitions.

`create` copies the recovery partitions online (safe while the flow runs),
uploads them with a manifest to `checkpoints.dir` and applies
`checkpoints.retained`. It returns once the local checkpoint cache (the sealed
copies the next incremental checkpoint deltas onto) is brought up to date, work
a running supervisor does in the background. `list` shows the complete
checkpoints, newest first.
"""

from __future__ import annotations

import argparse
import sys

from recovery.checkpoint import await_cache, default_cache_dir
from streamforge_ops import cluster_state, snapshots
from streamforge_ops.cli import CliError
from streamforge_ops.job import add_config_arg, load_job
from streamforge_ops.output import emit, listing, manifest_full, progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoint", help="take or list checkpoints",
                       description=__doc__.split("\n", 1)[1].strip())
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    create = actions.add_parser("create", help="take a checkpoint now (online, consistent)")
    lst = actions.add_parser("list", help="list complete checkpoints, newest first")
    for a in (create, lst):
        add_config_arg(a)
        a.add_argument("--store", metavar="URL", help="override checkpoints.dir")
        a.add_argument("--json", action="store_true", help="machine-readable output")
    create.set_defaults(func=_create)
    lst.set_defaults(func=_list)


def _create(args: argparse.Namespace) -> int:
    job = load_job(args.config, store=args.store)
    if not job.recovery_dir.is_dir():
        raise CliError(f"no recovery partitions in {job.recovery_dir}: run the pipeline first")
    progress(f"checkpointing {job.recovery_dir} to {job.settings.checkpoints.store.url} ...")
    out = snapshots.take(job, "checkpoint", log=progress, taker=cluster_state.pod_taker(job))
    if not out.ok:
        print(f"streamforge: checkpoint failed: {out.error}", file=sys.stderr)
        return 1
    # the cache's background work (digest or advance) would die with this process, and
    # the next checkpoint would be full
    progress(f"checkpoint {out.manifest.id} published; updating the local checkpoint cache ...")
    await_cache(default_cache_dir(job.recovery_dir), job.settings.checkpoints.timeout_s)
    emit(manifest_full(out.manifest), as_json=args.json, text=out.manifest.id)
    return 0


def _list(args: argparse.Namespace) -> int:
    from recovery.checkpoint import list_checkpoints

    job = load_job(args.config, store=args.store)
    listing(list_checkpoints(job.checkpoint_store, job.pipeline), as_json=args.json)
    return 0
