"""What every pipeline does the same way: load its config, ingest, run a user hook.

- `pipeline_config(name)`: `$STREAMFORGE_CONFIG`, else `config/<name>.yaml`
  (`dataflows.config.resolve_config_path`, the CLI's order too), with
  `STREAMFORGE__A__B` overrides.
- `ParseOptions.from_config(cfg)`: the `parse.*` keys, `limits.max-record-bytes`
  and the strict-JSON limits (`limits.max-nesting-depth`, default 64, at most
  1000; `parse.integer-range`: `i-json` (default) or `int64`; see
  `dataflows/parse.py`).
- `ingest(...)`: input step + parse, per batch. A source may yield RawRecords (file,
  kafka; parsed here), Events (mongo; passed through) and DeadLetters (a
  source's own errors); emits `ok` Events and `dlq` DeadLetters.
- `load_hook(cfg, key)` / `apply_hook(...)`: an optional user function
  `module:function` (Event -> Event, or -> dict = the new value) run guarded:
  if it raises or returns anything else, the event becomes a USER_FUNCTION
  dead letter and the flow goes on.
- `HookTransform(hook, stage, pipeline)`: the hook as a keyed lane runs it
  (`Event -> Event | DeadLetter`; `dataflows.flow.orders_lane`).
- dedup runs in each key's lane (`dataflows.flow.orders_lane` /
  `sessions_lane`, or `dedup_by_key`): keying dedup by the event id would send
  one key's events through different workers, and a keyed step after it would
  see them in a different order than the source's. Idle expiry runs on the
  pipeline clock (`dataflows/clock.py`): a restart that took longer than the
  TTL expires nothing, so the replay drops what the original run dropped.
- `lazy_flow(name, build_flow)`: the module-level `flow`, built on first access
  (so importing a pipeline module for `build_flow` never reads a config). It
  refuses the config of another flow (`check_flow_config`): one line on stderr,
  exit 2. Once built, it sets the process's garbage collector (`dataflows.gc_tuning.tune_gc`).
- `check_flow_config(cfg, name)`: ConfigError unless the config's flow is
  `dataflows.pipelines.<name>:flow`: `pipeline.flow`, or when it is absent
  the flow `pipeline.name` stands for (as `streamforge run` resolves it).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source

from dataflows.config import Config, ConfigError, load_config, resolve_config_path
from dataflows.dead_letter import DeadLetter
from dataflows.errors import Guarded, _to_dead_letter, guarded_map
from dataflows.events import Event
from dataflows.flow import split_types
from dataflows.gc_tuning import tune_gc
from dataflows.parse import INTEGER_RANGES, MAX_NESTING_DEPTH, BatchParser, StrictLimits, TypeSpec
from dataflows.patterns.dedup import (
    LaneDedupState,  # pickled state of the lane dedup before issue 11
)

__all__ = [
    "HookTransform",
    "LaneDedupState",
    "ParseOptions",
    "apply_hook",
    "check_flow_config",
    "dedup_ttl_ms",
    "ingest",
    "lazy_flow",
    "load_hook",
    "pipeline_config",
]


def pipeline_config(name: str) -> Config:
    """The config of pipeline `name` (see module docstring)."""
    return load_config(resolve_config_path(None, name))


@dataclass(frozen=True)
class ParseOptions:
    """How a pipeline's records become Events."""

    key_field: str
    time_field: str | None
    op_field: str | None
    id_field: str | None
    max_record_bytes: int
    limits: StrictLimits = StrictLimits()

    @classmethod
    def from_config(cls, cfg: Config, *, key_field: str, time_field: str | None = "ts",
                    op_field: str | None = None, id_field: str | None = None) -> ParseOptions:
        return cls(
            key_field=cfg.str("parse.key-field", key_field),
            time_field=cfg.str("parse.time-field", time_field),
            op_field=cfg.str("parse.op-field", op_field),
            id_field=cfg.str("parse.id-field", id_field),
            max_record_bytes=_positive_size(cfg, "limits.max-record-bytes", "1MiB"),
            limits=_strict_limits(cfg),
        )


def _strict_limits(cfg: Config) -> StrictLimits:
    depth = cfg.int("limits.max-nesting-depth", StrictLimits.max_depth, minimum=1)
    if depth > MAX_NESTING_DEPTH:
        raise ConfigError(f"limits.max-nesting-depth: must be <= {MAX_NESTING_DEPTH}, got {depth} (in {cfg.origin})")
    integers = cfg.choice("parse.integer-range", tuple(INTEGER_RANGES), StrictLimits.integers)
    return StrictLimits(max_depth=depth, integers=integers)


def _positive_size(cfg: Config, key: str, default: str) -> int:
    value = cfg.size(key, default)
    if value < 1:
        raise ConfigError(f"{key}: must be > 0, got {value} (in {cfg.origin})")
    return value


def ingest(
    flow: Dataflow,
    source: Source[Any],
    *,
    pipeline: str,
    options: ParseOptions,
    optional: Mapping[str, TypeSpec] | None = None,
) -> Guarded:
    """Steps `source` and `parse` (one `flat_map_batch`, `parse.BatchParser`): emits Events
    (`ok`) and DeadLetters (`dlq`).

    RawRecords are parsed (dead letters' stage `<flow>.parse`), Events pass, a
    source's own DeadLetters join the DLQ, anything else is an UNSUPPORTED_TYPE
    dead letter (stage `<flow>.source`).
    """
    items = op.input("source", flow, source)
    parser = BatchParser(
        pipeline=pipeline,
        stage=f"{flow.flow_id}.parse",
        source_stage=f"{flow.flow_id}.source",
        key_field=options.key_field,
        time_field=options.time_field,
        max_record_bytes=options.max_record_bytes,
        op_field=options.op_field,
        required={options.id_field: str} if options.id_field else None,
        optional=optional,
        limits=options.limits,
    )
    return split_types("ingest", op.flat_map_batch("parse", items, parser))


def load_hook(cfg: Config, key: str) -> Callable[[Event], Any] | None:
    """The `module:function` named by `key`, or None; ConfigError naming `key` if bad."""
    spec = cfg.str(key, None)
    if not spec:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key}: expected 'module:function', got {spec!r} (in {cfg.origin})")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}: cannot load {spec!r}: {exc} (in {cfg.origin})") from None
    if not callable(fn):
        raise ConfigError(f"{key}: {spec!r} is not callable (in {cfg.origin})")
    return fn


class _HookAdapter:
    """Calls the user hook; accepts an Event or a dict (the new value) back."""

    def __init__(self, hook: Callable[[Event], Any]) -> None:
        self.hook = hook

    def __call__(self, event: Event) -> Event:
        result = self.hook(event)
        if isinstance(result, Event):
            return result
        if isinstance(result, dict):
            return Event(event.key, result, event.event_time_ms, event.event_id, event.source,
                         event.op, event.headers)
        raise TypeError(f"hook must return an Event or a dict, got {type(result).__name__}")


class HookTransform:
    """`Event -> Event | DeadLetter`: the hook run guarded inside a keyed lane.

    A raising hook, a wrong return type or a changed `key` (the key's lane owns
    its document) is a USER_FUNCTION dead letter of stage `stage`.
    """

    def __init__(self, hook: Callable[[Event], Any], stage: str, pipeline: str) -> None:
        self.adapter, self.stage, self.pipeline = _HookAdapter(hook), stage, pipeline

    def __call__(self, event: Event) -> Event | DeadLetter:
        try:
            out = self.adapter(event)
            if out.key != event.key:
                raise ValueError(f"hook changed the key {event.key!r} to {out.key!r}: it must keep it")
            return out
        except Exception as exc:  # noqa: BLE001 - a failing hook is a dead letter
            return _to_dead_letter(event, exc, self.stage, self.pipeline)


def _never(_item: Any) -> bool:
    return False


def apply_hook(step_id: str, up: Stream[Event], hook: Callable[[Event], Any] | None,
               *, pipeline: str) -> Guarded:
    """Run `hook` guarded over `up` (identity when there is no hook)."""
    if hook is None:
        no_letters = cast(Stream[DeadLetter], op.filter(f"{step_id}_none", up, _never))
        return Guarded(up, no_letters)
    return guarded_map(step_id, up, _HookAdapter(hook), pipeline=pipeline)


def dedup_ttl_ms(cfg: Config, default: str | None = "1h") -> int | None:
    """`patterns.dedup.ttl` in ms (> 0); None when absent and `default` is None."""
    ttl = cfg.duration("patterns.dedup.ttl", default)
    if ttl is None:
        return None
    if ttl <= 0:
        raise ConfigError(f"patterns.dedup.ttl: must be > 0, got {ttl}s (in {cfg.origin})")
    return int(ttl * 1000)


def _flow_of(name: str) -> str:
    return f"dataflows.pipelines.{name}:flow"


def check_flow_config(cfg: Config, name: str) -> None:
    """ConfigError naming `pipeline.flow` when `cfg` is the config of another flow than
    `dataflows.pipelines.<name>:flow` (see the module docstring). A `pipeline.name` of
    its own (`clicks-eu`) without `pipeline.flow` is fine unless it names another
    pipeline module."""
    flow = cfg.str("pipeline.flow", None)
    if flow is None:
        other = cfg.str("pipeline.name", name)
        if other == name or importlib.util.find_spec(f"dataflows.pipelines.{other}") is None:
            return
        flow = _flow_of(other)
    if flow != _flow_of(name):
        raise ConfigError(
            f"pipeline.flow: {cfg.origin} is the config of {flow}, not of {_flow_of(name)}; "
            f"run {_flow_of(name)} with its own config (STREAMFORGE_CONFIG=config/{name}.yaml)"
        )


def lazy_flow(name: str, build_flow: Callable[[Config], Dataflow]) -> Callable[[str], Any]:
    """A module `__getattr__` that builds `flow` from `pipeline_config(name)` once.

    A config that cannot be read, or is another flow's, prints one line
    (`streamforge: cannot start: ...`, as `streamforge run` does) and exits 2.
    """
    cache: dict[str, Dataflow] = {}

    def __getattr__(attr: str) -> Any:
        if attr != "flow":
            raise AttributeError(attr)
        if "flow" not in cache:
            try:
                cfg = pipeline_config(name)
                check_flow_config(cfg, name)
            except ConfigError as exc:
                print(f"streamforge: cannot start: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
            cache["flow"] = build_flow(cfg)
            tune_gc()  # the one place every pipeline process sets its collector (dataflows/gc_tuning.py)
        return cache["flow"]

    return __getattr__
