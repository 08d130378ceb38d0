"""Build sources and sinks from a config section, by `type`.

- `build_source(cfg, pipeline)`: `source` section; `file` -> `JsonlSource`
  (`path`: a path, glob or list; `tail`; `batch-size`; `poll-interval`),
  `kafka` -> `dataflows.connectors.kafka.kafka_source_from_config`,
  `mongo` -> `dataflows.connectors.mongo.mongo_source_from_config`.
- `build_sink(cfg, pipeline)`: `sink` section; `file` (`path`), `kafka`, `mongo`.
- `build_changes_sink(cfg, pipeline)`: the optional diffs output of the `sink`
  section: `changes-path` (JSONL) or `changes-topic` (kafka), else None.
- `build_dlq_sink(cfg, pipeline)`: `dlq` section; `file` (`path`), `kafka`.

Connector modules are imported only when their type is used, so a missing
module fails that pipeline only, with a ConfigError naming the key.
`write_output` writes a stream into any of these sinks: partitioned sinks
(Bytewax `FixedPartitionedSink`) get `(key, item)` pairs, others the items.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.inputs import Source
from bytewax.outputs import FixedPartitionedSink, Sink

from dataflows.config import Config, ConfigError
from dataflows.connectors.dlq import JsonlDeadLetterSink
from dataflows.connectors.files import JsonlSink, JsonlSource, expand_paths

__all__ = [
    "build_changes_sink",
    "build_dlq_sink",
    "build_sink",
    "build_source",
    "item_key",
    "write_output",
]

SOURCE_TYPES = ("file", "kafka", "mongo")
SINK_TYPES = ("file", "kafka", "mongo")
DLQ_TYPES = ("file", "kafka")


def _section_name(cfg: Config, default: str) -> str:
    """`source` from an origin like `config/orders.yaml#source`."""
    return cfg.origin.rsplit("#", 1)[1] if "#" in cfg.origin else default


@contextmanager
def _keys_under(section: str) -> Iterator[None]:
    """Prefix ConfigErrors raised by a section's getters with the section name.

    `Config.section()` getters name keys relative to the section (`type: ...`);
    users need the full key (`source.type: ...`).
    """
    try:
        yield
    except ConfigError as exc:
        text = str(exc)
        if text.startswith(f"{section}."):
            raise
        raise ConfigError(f"{section}.{text}") from None


def _connector(cfg: Config, section: str, module: str, function: str, pipeline: str) -> Any:
    try:
        mod = importlib.import_module(f"dataflows.connectors.{module}")
        factory = getattr(mod, function)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"{section}.type: {cfg.str('type')!r} is not available "
            f"(dataflows.connectors.{module}.{function}: {exc})"
        ) from None
    return factory(cfg, pipeline)


def _file_paths(cfg: Config, section: str) -> list[str]:
    value = cfg.raw("path", None)
    if value is None:
        raise ConfigError(f"{section}.path: required for type 'file' (in {cfg.origin})")
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{section}.path: expected a path or a list of paths (in {cfg.origin})")
        return value
    return [cfg.str("path")]


def build_source(cfg: Config, pipeline: str) -> Source[Any]:
    """The source of a `source` config section."""
    section = _section_name(cfg, "source")
    with _keys_under(section):
        return _build_source(cfg, section, pipeline)


def _build_source(cfg: Config, section: str, pipeline: str) -> Source[Any]:
    kind = cfg.choice("type", SOURCE_TYPES, "file")
    if kind == "kafka":
        return _connector(cfg, section, "kafka", "kafka_source_from_config", pipeline)
    if kind == "mongo":
        return _connector(cfg, section, "mongo", "mongo_source_from_config", pipeline)
    paths = _file_paths(cfg, section)
    tail = cfg.bool("tail", False)
    batch_size = cfg.int("batch-size", 1000, minimum=1)
    poll = cfg.duration("poll-interval", "200ms")
    if not tail and not expand_paths(paths, keep_missing=False):
        raise ConfigError(f"{section}.path: no file matches {paths!r} (in {cfg.origin})")
    return JsonlSource(paths, tail=tail, batch_size=batch_size, poll_interval=timedelta(seconds=poll))


def build_sink(cfg: Config, pipeline: str, *, path_key: str = "path") -> Sink[Any]:
    """The sink of a `sink` config section (`path_key` picks another file path key)."""
    section = _section_name(cfg, "sink")
    with _keys_under(section):
        return _build_sink(cfg, section, pipeline, path_key)


def _build_sink(cfg: Config, section: str, pipeline: str, path_key: str) -> Sink[Any]:
    kind = cfg.choice("type", SINK_TYPES, "file")
    if kind == "kafka":
        return _connector(cfg, section, "kafka", "kafka_sink_from_config", pipeline)
    if kind == "mongo":
        return _connector(cfg, section, "mongo", "mongo_sink_from_config", pipeline)
    return JsonlSink(cfg.str(path_key))


def build_changes_sink(cfg: Config, pipeline: str) -> Sink[Any] | None:
    """The optional second output of a `sink` section: `changes-path` (JSONL file)
    or, for `type: kafka`, `changes-topic` (the same brokers and mode); None if neither."""
    section = _section_name(cfg, "sink")
    with _keys_under(section):
        if cfg.has("changes-path"):
            return JsonlSink(cfg.str("changes-path"))
        if cfg.has("changes-topic"):
            if cfg.str("type", "file") != "kafka":
                raise ConfigError(f"{section}.changes-topic: needs type 'kafka' (in {cfg.origin})")
            data = {**cfg.data, "topic": cfg.str("changes-topic")}
            if "transactional-id-prefix" in data:
                data["transactional-id-prefix"] = f"{data['transactional-id-prefix']}.changes"
            else:
                data["transactional-id-prefix"] = f"streamforge.{pipeline}.changes"
            return _connector(replace(cfg, data=data), section, "kafka", "kafka_sink_from_config", pipeline)
    return None


def build_dlq_sink(cfg: Config, pipeline: str) -> Sink[Any]:
    """The DLQ sink of a `dlq` config section."""
    section = _section_name(cfg, "dlq")
    with _keys_under(section):
        kind = cfg.choice("type", DLQ_TYPES, "file")
        if kind == "kafka":
            return _connector(cfg, section, "kafka", "kafka_dlq_sink_from_config", pipeline)
        return JsonlDeadLetterSink(cfg.str("path"))


def item_key(item: Any) -> str:
    """Routing key of a sink item: its `key` (or `event_id`), else ''."""
    key = getattr(item, "key", None)
    if key is None and isinstance(item, dict):
        key = item.get("key")
    if key is None:
        key = getattr(item, "event_id", None)
    if isinstance(key, bytes):
        return key.decode("utf-8", "backslashreplace")
    return "" if key is None else str(key)


def write_output(step_id: str, up: Stream[Any], sink: Sink[Any]) -> None:
    """Write `up` into `sink`; keys items first when the sink is partitioned."""
    if isinstance(sink, FixedPartitionedSink):
        up = op.key_on(f"{step_id}_key", up, item_key)
    op.output(step_id, up, sink)
