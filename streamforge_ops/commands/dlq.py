"""`streamforge dlq inspect|replay`: look into a dead-letter queue and replay it.

    streamforge dlq inspect --brokers H:P --topic orders-dlq [--error-code SCHEMA] [--json]
    streamforge dlq inspect --file .streamforge/orders/out/dlq.jsonl
    streamforge dlq replay --brokers H:P --topic orders-dlq --error-code MALFORMED_JSON \\
        --since 2026-11-22T08:00 --rate 100 [--to orders-retry] [--dry-run] [--json]
    streamforge dlq replay --config config/orders.yaml --error-code OVERSIZED [--dry-run]
    streamforge dlq inspect            # the DLQ of $STREAMFORGE_CONFIG's pipeline

Replayed records carry the original key and payload bytes, header
`sf-event-id` (their event id) and `sf-replay` (the replay tag); into a
JSONL file (`--to-file`, or a file source with `--config`) an envelope line
that the file source reads back with the original event id. `--config` takes
the DLQ and the target (the pipeline's input) from the pipeline config; with
none of `--config`, `--file`, `--topic` the config is `$STREAMFORGE_CONFIG`, as
for every command (`dataflows.config.resolve_config_path`). `inspect` needs only
the DLQ; `replay` also a target. A pipeline's output topic is refused as a
target (see docs/dlq-replay-guide.md). Brokers that do not answer within
`--timeout` are one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from streamforge_ops.cli import CliError
from streamforge_ops.dlq_replay import (
    DlqFilter,
    FileTarget,
    KafkaTarget,
    KafkaUnreachable,
    as_set,
    dlq_from_config,
    letters_source,
    parse_time_ms,
    plan_from_config,
    refuse_output_topic,
    replay,
    summarize,
    to_json,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dlq", help="inspect and replay a dead-letter queue",
                       description="Inspect and replay a dead-letter queue (Kafka topic or JSONL file).")
    dsub = p.add_subparsers(dest="dlq_command", metavar="ACTION")
    dsub.required = True
    ins = dsub.add_parser("inspect", help="counts by error code and stage, with samples",
                          description="Count dead letters by error code and stage; show samples.")
    _common(ins)
    ins.add_argument("--samples", type=int, default=3, help="samples per error code (default 3)")
    ins.set_defaults(func=_inspect)
    rep = dsub.add_parser("replay", help="re-produce dead letters to their topic (or --to)",
                          description="Replay dead letters: original key and payload, same event id.")
    _common(rep)
    rep.add_argument("--to", metavar="TOPIC", help="target topic (default: the original topic of each letter)")
    rep.add_argument("--to-file", metavar="PATH", help="append to this JSONL file (a file source's input)")
    rep.add_argument("--allow-output-topic", action="store_true",
                     help="--to a topic written by an at-least-once StreamForge sink (e.g. a sink's own "
                          "dead letters back to its output); never an exactly-once output")
    rep.add_argument("--target-brokers", help="brokers of the target (default: --brokers)")
    rep.add_argument("--rate", type=float, help="at most N records per second")
    rep.add_argument("--dry-run", action="store_true", help="count what would be replayed, write nothing")
    rep.add_argument("--tag", help="value of the sf-replay header (default: current time in ms)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    rep.set_defaults(func=_replay)


def _common(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("DLQ source (a pipeline config, a Kafka topic or a JSONL file)")
    src.add_argument("--config", metavar="PIPELINE.yaml",
                     help="the pipeline's DLQ (dlq section); replay writes to its input "
                          "(default without --file / --topic: $STREAMFORGE_CONFIG)")
    src.add_argument("--brokers", help="Kafka bootstrap servers, host:port[,host:port]")
    src.add_argument("--topic", help="DLQ topic")
    src.add_argument("--file", help="JSONL DLQ file")
    flt = p.add_argument_group("filters")
    flt.add_argument("--error-code", action="append", help="only these codes (repeat or comma-separate)")
    flt.add_argument("--step", "--stage", dest="stage", action="append",
                     help="only these steps (full step ids, the dead letters' stage; the metric label step)")
    flt.add_argument("--since", help="last failure at or after (ISO-8601, or epoch ms)")
    flt.add_argument("--until", help="last failure before (ISO-8601, or epoch ms)")
    p.add_argument("--timeout", default="30s", help="how long Kafka brokers may take to answer (default 30s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _timeout(args: argparse.Namespace) -> float:
    from dataflows.config import parse_duration

    try:
        return parse_duration(args.timeout)
    except ValueError as exc:
        raise CliError(f"--timeout: {exc}") from None


def _config(args: argparse.Namespace) -> Any:
    """The pipeline config of `--config` (or, with no DLQ source given, $STREAMFORGE_CONFIG);
    None when a raw `--file` / `--topic` is given instead."""
    from dataflows.config import ConfigError, load_config, resolve_config_path

    if args.config and (args.file or args.topic):
        raise CliError("give either --config or --file / --brokers --topic, not both")
    if not args.config and (args.file or args.topic):
        return None
    try:
        return load_config(resolve_config_path(args.config, None))
    except ConfigError as exc:
        if args.config:
            raise CliError(str(exc)) from None
        raise CliError("a DLQ source is needed: --config PIPELINE.yaml (or $STREAMFORGE_CONFIG), "
                       "--brokers and --topic, or --file") from None


def _filter(args: argparse.Namespace) -> DlqFilter:
    times: dict[str, int | None] = {}
    for name in ("since", "until"):
        text = getattr(args, name)
        try:
            times[name] = None if text is None else parse_time_ms(text)
        except ValueError:
            raise CliError(f"--{name}: expected an ISO-8601 time or epoch milliseconds, got {text!r}") from None
    if times["since"] is not None and times["until"] is not None and times["since"] >= times["until"]:
        raise CliError("--since must be before --until")
    return DlqFilter(as_set(args.error_code), as_set(args.stage), times["since"], times["until"])


def _plan(args: argparse.Namespace) -> Any:
    """The `plan_from_config` of the pipeline config (None with a raw DLQ source)."""
    cfg = _config(args)
    if cfg is None:
        return None
    from dataflows.config import ConfigError

    try:
        return plan_from_config(cfg, timeout_s=_timeout(args))
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:
        raise CliError(f"{cfg.origin}: {exc}") from None


def _source(args: argparse.Namespace) -> Any:
    """The dead letters to inspect: the config's DLQ (no replay target needed) or a raw source."""
    cfg = _config(args)
    if cfg is not None:
        from dataflows.config import ConfigError

        try:
            return dlq_from_config(cfg, timeout_s=_timeout(args))[0]
        except ConfigError as exc:
            raise CliError(str(exc)) from None
    if args.file and args.topic:
        raise CliError("give either --file or --brokers/--topic, not both")
    if not args.file and not (args.brokers and args.topic):
        raise CliError("a DLQ source is needed: --brokers and --topic, or --file")
    if args.file:
        if not Path(args.file).is_file():
            raise CliError(f"--file: {args.file} does not exist")
    return letters_source(args.brokers, args.topic, args.file, timeout_s=_timeout(args))


def _run_guarded(fn: Any) -> Any:
    try:
        return fn()
    except (LookupError, TimeoutError, KafkaUnreachable) as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:
        raise CliError(f"unreadable dead letter: {exc}") from None


def _inspect(args: argparse.Namespace) -> int:
    flt = _filter(args)
    if args.samples < 0:
        raise CliError("--samples must be >= 0")
    summary = _run_guarded(lambda: summarize(_source(args), flt, samples=args.samples))
    if args.json:
        print(to_json(summary))
        return 0
    print(f"dead letters: {summary['total']} (matching filters: {summary['matched']})")
    for title, key in (("by error code", "by_error_code"), ("by stage", "by_stage")):
        print(f"{title}:")
        for name, n in summary[key].items():
            print(f"  {n:>8}  {name}")
    for code, samples in summary["samples"].items():
        print(f"samples of {code}:")
        for s in samples:
            print(f"  {s['event_id']}  stage={s['stage']}  {s['message'][:120]}")
            print(f"    payload: {s['payload'][:120]}")
    return 0


def _target(args: argparse.Namespace, plan: Any) -> Any:
    """The replay target; refuses a pipeline's output topic (replay goes through its input)."""
    if args.to and args.to_file:
        raise CliError("give either --to or --to-file, not both")
    if args.to_file:
        return FileTarget(args.to_file)
    if plan is not None:
        eo = plan.exactly_once_outputs
        target = KafkaTarget(plan.brokers, args.to) if args.to and plan.brokers else plan.target
        if args.to and not plan.brokers:
            raise CliError("--to: the pipeline's source is not Kafka; use --to-file")
    else:
        target_brokers = args.target_brokers or args.brokers
        if not args.dry_run and not target_brokers:
            raise CliError("replaying needs --brokers (or --target-brokers), or use --dry-run")
        target, eo = KafkaTarget(target_brokers, args.to), []
    if isinstance(target, KafkaTarget) and target.brokers:
        for topic in [target.to] if target.to else list(target.inputs):
            _run_guarded(lambda topic=topic: refuse_output_topic(
                target.brokers, topic, exactly_once=eo, peek=0 if args.allow_output_topic else 5,
                timeout_s=_timeout(args)))
    return target


def _replay(args: argparse.Namespace) -> int:
    flt = _filter(args)
    if args.rate is not None and args.rate <= 0:
        raise CliError("--rate must be > 0")
    plan = _plan(args)
    target = _target(args, plan)
    letters = plan.letters if plan is not None else _source(args)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(desc="replay", unit="rec", file=sys.stderr, disable=None)
    try:
        report = _run_guarded(lambda: replay(
            letters, target=target, flt=flt, rate=args.rate,
            dry_run=args.dry_run, tag=args.tag, progress=bar.update if bar is not None else (lambda n: None),
        ))
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(to_json(report.to_dict()))
    else:
        verb = "would replay" if args.dry_run else "replayed"
        n = sum(report.by_topic.values())
        print(f"{verb} {n} of {report.matched} matching dead letters (of {report.total}); tag {report.tag}")
        for topic, k in report.by_topic.items():
            print(f"  {k:>8} -> {topic}")
        if report.no_topic:
            print(f"  {report.no_topic} skipped: no original topic in their coordinates (use --to)")
        for err in report.errors[:5]:
            print(f"  error: {err}", file=sys.stderr)
    return 1 if report.failed else 0
