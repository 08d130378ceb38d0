"""`streamforge state inspect|compact|migrate`: look at and maintain recovery partitions.

`inspect` reports steps, keys, bytes per step and epochs of the local
partitions (`--dir`, default recovery.dir) or of a checkpoint / savepoint
(downloaded and verified into a temporary directory). `compact` deletes the
NULL rows discarded keys leave behind (safe while the flow runs). `migrate`
renames steps per the config's `state.step-renames`, upgrades pickled
pattern state to the current STATE_VERSIONs and, with `--reshard STEP=N`,
re-keys a dedup or sessions step's per-key rows (written with `shards=None`,
before shards became the default) into the N shard rows the sharded step
restores (`dataflows.flow.legacy.shard_per_key_rows`). Run it on a stopped
pipeline, after restoring a savepoint taken by older code:

    streamforge state migrate --config config/clicks.yaml \
        --reshard clicks.sessions.sessions.stateful_batch=64
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from streamforge_ops.cli import CliError
from streamforge_ops.job import Job, add_config_arg, load_job, snapshot_id
from streamforge_ops.output import emit, progress, table
from streamforge_ops.restoring import parse_target, restore_into


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("state", help="inspect, compact or migrate recovery state",
                       description=__doc__.split("\n", 1)[1].strip())
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    inspect = actions.add_parser("inspect", help="steps, keys, bytes and epochs of the state")
    compact = actions.add_parser("compact", help="delete discarded-key rows at or below commit epochs")
    migrate = actions.add_parser("migrate", help="rename steps (state.step-renames) and upgrade pickled state")
    for a in (inspect, compact, migrate):
        add_config_arg(a)
        a.add_argument("--json", action="store_true", help="machine-readable output")
    src = inspect.add_mutually_exclusive_group()
    src.add_argument("target", nargs="?", metavar="TARGET",
                     help="checkpoint:ID or savepoint:ID from the store (default: the local partitions)")
    src.add_argument("--dir", type=Path, help="recovery directory (default: recovery.dir)")
    src.add_argument("--checkpoint", metavar="ID", type=snapshot_id("checkpoint"),
                     help="inspect a checkpoint from the store (= TARGET checkpoint:ID)")
    src.add_argument("--savepoint", metavar="ID", type=snapshot_id("savepoint"),
                     help="inspect a savepoint from the store (= TARGET savepoint:ID)")
    inspect.add_argument("--store", metavar="URL", help="override checkpoints.dir and savepoints.dir")
    for a in (compact, migrate):
        a.add_argument("--dir", type=Path, help="recovery directory (default: recovery.dir)")
    migrate.add_argument("--reshard", metavar="STEP=N", action="append", type=_reshard_arg, default=[],
                         help="re-key STEP's per-key rows into N shard rows (a dedup or sessions step "
                              "built with shards=N, the default 64, whose state was written per key); "
                              "repeatable")
    inspect.set_defaults(func=_inspect)
    compact.set_defaults(func=_compact)
    migrate.set_defaults(func=_migrate)


def _local_dir(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        rdir: Path = args.dir
    else:
        rdir = load_job(args.config).recovery_dir
    if not rdir.is_dir() or not any(rdir.glob("part-*.sqlite3")):
        raise CliError(f"{rdir} holds no recovery partitions")
    return rdir


def _inspect(args: argparse.Namespace) -> int:
    if args.target or args.checkpoint or args.savepoint:
        target = parse_target(args.target or (f"checkpoint:{args.checkpoint}" if args.checkpoint
                                              else f"savepoint:{args.savepoint}"))
        if not isinstance(target, tuple):
            raise CliError(f"state inspect {args.target}: give checkpoint:ID or savepoint:ID (or --dir)")
        job = load_job(args.config, store=args.store)
        report = _inspect_remote(job, target)
    else:
        rdir = _local_dir(args)
        from recovery.inspect import inspect_partitions

        report = inspect_partitions(rdir)
    emit(report, as_json=args.json, text=_render(report))
    return 0


def _inspect_remote(job: Job, target: tuple[Literal["checkpoint", "savepoint"], str]) -> dict[str, Any]:
    from recovery.inspect import inspect_partitions

    kind, ident = target
    with tempfile.TemporaryDirectory(prefix="sf-inspect-") as tmp:
        progress(f"downloading {kind} {ident} ...")
        restore_into(job, Path(tmp) / "recovery", target, strict=True, check_steps=False)
        report = dict(inspect_partitions(Path(tmp) / "recovery"))
    report["source"] = f"{kind}:{ident}"
    return report


def _render(report: dict[str, Any]) -> str:
    steps = report.get("steps")
    lines: list[str] = []
    if isinstance(steps, dict):
        rows = [{"step": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in steps.items()]
        cols = list(dict.fromkeys(c for r in rows for c in r))
        lines.append(table(rows, cols))
    lines += [f"{k}: {v}" for k, v in report.items() if k not in ("steps", "partitions")]
    return "\n".join(lines)


def _compact(args: argparse.Namespace) -> int:
    from recovery.compact import compact

    rdir = _local_dir(args)
    progress(f"compacting {rdir} ...")
    rows = compact(rdir)
    emit({"dir": str(rdir), "rows_removed": rows}, as_json=args.json, text=f"removed {rows} rows from {rdir}")
    return 0


def _import_flow_module(args: argparse.Namespace) -> None:
    """Import the pipeline's flow module: it registers its state migrations and
    makes the pickled state classes importable."""
    try:
        job = load_job(args.config)
    except CliError:
        return  # --dir without a config: only migrations registered by imports so far
    module = job.settings.flow.partition(":")[0]
    os.environ.setdefault("STREAMFORGE_CONFIG", str(job.config_path))
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - report and migrate what is registered
        progress(f"warning: could not import {module} ({type(exc).__name__}: {exc})")


def _reshard_arg(text: str) -> tuple[str, int]:
    """`STEP=N` -> (STEP, N), N >= 1."""
    step, sep, n = text.rpartition("=")
    if not sep or not step or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(
            f"expected STEP=N (a step id and a shard count >= 1), got {text!r}")
    return step, int(n)


def _migrate(args: argparse.Namespace) -> int:
    from dataflows.flow.legacy import shard_per_key_rows
    from recovery.migrate import migrate_dir
    from recovery.steps import snapshot_steps

    rdir = _local_dir(args)
    renamed = _rename_steps(args, rdir)
    if args.reshard:  # the step ids after the renames; refused before anything else changes
        steps = snapshot_steps(rdir)
        for step, shards in args.reshard:
            if step not in steps:
                raise CliError(f"--reshard {step}={shards}: {rdir} holds no state of step {step!r} "
                               f"(its steps: {', '.join(sorted(steps)) or 'none'})")
    _import_flow_module(args)
    progress(f"migrating state in {rdir} ...")
    changed = migrate_dir(rdir)
    resharded: dict[str, int] = {}
    for step, shards in args.reshard:
        progress(f"re-keying {step}'s per-key rows into {shards} shards ...")
        try:
            resharded[step] = shard_per_key_rows(rdir, step, shards)
        except ValueError as exc:
            raise CliError(f"--reshard {step}={shards}: {exc}") from None
    text = f"migrated {changed} state rows, renamed {renamed} in {rdir}" + "".join(
        f"; {step}: {n or 'no'} shard rows written{'' if n else ' (no per-key rows)'}"
        for step, n in resharded.items())
    emit({"dir": str(rdir), "migrated": changed, "renamed": renamed, "resharded": resharded},
         as_json=args.json, text=text)
    return 0


def _rename_steps(args: argparse.Namespace, rdir: Path) -> int:
    """Apply state.step-renames of the config (if one is given) to `rdir`; rows renamed."""
    from streamforge_ops.restore_steps import apply_step_renames

    try:
        job = load_job(args.config)
    except CliError:
        return 0  # --dir without a config: no renames configured
    return apply_step_renames(job, rdir)
