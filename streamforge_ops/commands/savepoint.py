"""`streamforge savepoint`: named snapshots for upgrades, schema changes and rescaling.

Savepoints live under `savepoints/` of `savepoints.dir` and are never removed
by checkpoint retention. `prune` removes by age and count but always keeps at
least one. `restore ID` replaces the local recovery partitions with the
savepoint (stop the pipeline first). `create --pin` / `pin ID` / `unpin ID`:
a pinned savepoint is never pruned or deleted, and on S3 its objects are
tagged `streamforge-pinned=true` so the bucket lifecycle rule that
`streamforge deploy render` writes (s3-lifecycle.json) does not expire it.
"""

from __future__ import annotations

import argparse
import sys

from dataflows.config import parse_duration
from streamforge_ops import cluster_state, snapshots
from streamforge_ops.cli import CliError
from streamforge_ops.job import add_config_arg, load_job, snapshot_id, supervisor_pid
from streamforge_ops.output import emit, listing, manifest_full, progress
from streamforge_ops.restore_steps import add_allow_arg, allowing
from streamforge_ops.restoring import restore_into


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("savepoint", help="create, list, describe, restore, delete, prune savepoints",
                       description=__doc__.split("\n", 1)[1].strip())
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    parsers = {
        "create": actions.add_parser("create", help="take a named savepoint now"),
        "list": actions.add_parser("list", help="list savepoints, newest first"),
        "describe": actions.add_parser("describe", help="show one savepoint's manifest"),
        "restore": actions.add_parser("restore", help="restore a savepoint into the recovery dir"),
        "delete": actions.add_parser("delete", help="delete one savepoint"),
        "prune": actions.add_parser("prune", help="delete old savepoints (keeps at least one)"),
        "pin": actions.add_parser("pin", help="keep a savepoint: never pruned, not expired by S3 lifecycle"),
        "unpin": actions.add_parser("unpin", help="let prune and the S3 lifecycle rule remove it again"),
        "verify": actions.add_parser("verify", help="restore into a scratch dir and load + run it with "
                                                    "the (new) --config's code; exit 1 on failure"),
    }
    for name, a in parsers.items():
        add_config_arg(a)
        a.add_argument("--store", metavar="URL", help="override savepoints.dir")
        a.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("describe", "restore", "delete", "pin", "unpin", "verify"):
            a.add_argument("id", metavar="ID", type=snapshot_id("savepoint"), help="savepoint id (ID or savepoint:ID)")
        a.set_defaults(func=globals()[f"_{name}"])
    parsers["create"].add_argument("--name", help="a label for the savepoint (e.g. pre-upgrade-v2)")
    parsers["create"].add_argument("--pin", action="store_true", help="pin it (see `savepoint pin`)")
    parsers["prune"].add_argument("--max-age", help="delete savepoints older than this (e.g. 7d)")
    parsers["prune"].add_argument("--max-count", type=int, help="keep at most this many")
    parsers["restore"].add_argument("--force", action="store_true",
                                    help="restore even while a supervisor of this job runs")
    add_allow_arg(parsers["restore"])
    add_allow_arg(parsers["verify"])
    parsers["verify"].add_argument("--run-for", default="10s",
                                   help="how long the new flow runs on the state, sinks discarded (default 10s)")


def _create(args: argparse.Namespace) -> int:
    job = load_job(args.config, store=args.store)
    if not job.recovery_dir.is_dir():
        raise CliError(f"no recovery partitions in {job.recovery_dir}: run the pipeline first")
    progress(f"savepoint of {job.recovery_dir} to {job.settings.savepoints.store.url} ...")
    out = snapshots.take(job, "savepoint", name=args.name, log=progress,
                         taker=cluster_state.pod_taker(job))
    if not out.ok:
        print(f"streamforge: savepoint failed: {out.error}", file=sys.stderr)
        return 1
    data = manifest_full(out.manifest)
    if args.pin:
        from recovery.savepoint import pin

        pin(job.savepoint_store, job.pipeline, out.manifest.id)
    data["pinned"] = args.pin
    emit(data, as_json=args.json, text=out.manifest.id)
    return 0


def _pin(args: argparse.Namespace, pinned: bool = True) -> int:
    from recovery.manifest import ManifestError
    from recovery.savepoint import pin, unpin

    job = load_job(args.config, store=args.store)
    try:
        snap_id = (pin if pinned else unpin)(job.savepoint_store, job.pipeline, args.id)
    except ManifestError as exc:
        raise CliError(f"no savepoint {args.id!r} for {job.pipeline!r}") from exc
    emit({"id": snap_id, "pinned": pinned}, as_json=args.json,
         text=f"{'pinned' if pinned else 'unpinned'} {snap_id}")
    return 0


def _unpin(args: argparse.Namespace) -> int:
    return _pin(args, pinned=False)


def _verify(args: argparse.Namespace) -> int:
    from streamforge_ops.verify import render_report, verify_savepoint

    try:
        run_for = parse_duration(args.run_for)
    except ValueError as exc:
        raise CliError(f"--run-for: {exc}") from None
    job = allowing(load_job(args.config, store=args.store), args)
    progress(f"verifying savepoint {args.id} against {job.settings.flow} ...")
    report = verify_savepoint(job, args.id, run_for_s=run_for)
    emit(report, as_json=args.json, text=render_report(report))
    return 0 if report["ok"] else 1


def _list(args: argparse.Namespace) -> int:
    from recovery.savepoint import list_savepoints

    job = load_job(args.config, store=args.store)
    listing(list_savepoints(job.savepoint_store, job.pipeline), as_json=args.json)
    return 0


def _describe(args: argparse.Namespace) -> int:
    from recovery.manifest import ManifestError
    from recovery.savepoint import describe

    job = load_job(args.config, store=args.store)
    try:
        manifest = describe(job.savepoint_store, job.pipeline, args.id)
    except ManifestError as exc:
        raise CliError(f"no savepoint {args.id!r} for {job.pipeline!r}") from exc
    from recovery.savepoint import is_pinned

    data = {**manifest_full(manifest), "pinned": is_pinned(job.savepoint_store, job.pipeline, manifest.id)}
    emit(data, as_json=args.json, text="\n".join(f"{k}: {v}" for k, v in data.items()))
    return 0


def _restore(args: argparse.Namespace) -> int:
    job = allowing(load_job(args.config, store=args.store), args)
    pid = supervisor_pid(job)
    if pid is not None and not args.force:
        raise CliError(f"a supervisor of {job.pipeline!r} runs (pid {pid}): stop it first or use --force")
    progress(f"restoring savepoint {args.id} into {job.recovery_dir} ...")
    decision = restore_into(job, job.recovery_dir, ("savepoint", args.id), strict=True)
    emit(decision.to_json(), as_json=args.json, text=decision.describe())
    return 0


def _delete(args: argparse.Namespace) -> int:
    from recovery.manifest import ManifestError
    from recovery.savepoint import delete_savepoint

    job = load_job(args.config, store=args.store)
    try:
        delete_savepoint(job.savepoint_store, job.pipeline, args.id)
    except ManifestError as exc:
        if "pinned" in str(exc):
            raise CliError(str(exc)) from None
        raise CliError(f"no savepoint {args.id!r} for {job.pipeline!r}") from exc
    snapshots.update_savepoint_gauge(job)
    emit({"deleted": args.id}, as_json=args.json, text=f"deleted {args.id}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    if args.max_age is None and args.max_count is None:
        raise CliError("prune: give --max-age and/or --max-count")
    if args.max_count is not None and args.max_count < 1:
        raise CliError(f"--max-count must be >= 1 (prune always keeps one), got {args.max_count}")
    try:
        max_age = parse_duration(args.max_age) if args.max_age is not None else None
    except ValueError as exc:
        raise CliError(f"--max-age: {exc}") from None
    job = load_job(args.config, store=args.store)
    from recovery.savepoint import prune_savepoints

    removed = prune_savepoints(job.savepoint_store, job.pipeline, max_age_s=max_age, max_count=args.max_count)
    snapshots.update_savepoint_gauge(job)
    emit({"deleted": removed}, as_json=args.json, text=f"deleted {len(removed)}: {' '.join(removed)}")
    return 0
