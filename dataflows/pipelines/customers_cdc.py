"""The customers_cdc pipeline: a MongoDB collection mirrored, via CDC, into another.

    mongo change stream (+ SnapshotLoader) -> merge (StatefulMerger: diffs) -> changes sink (optional)
                                          \\-> materialize (sweep) -> MongoDB target collection
    every dead letter (source: unsupported / oversized documents; sink writes) -> one DLQ sink

- source (`source.*`, see dataflows/connectors/mongo/from_config.py): change events and,
  on first start or after a lost or rejected position (286 / 280 / 136 / a
  refused or foreign token), a re-sync: snapshot events of a new generation,
  then a generation marker, emitted only when the scan walked the whole `_id`
  index of the same collection. A rename / drop of the source collection
  stops the source (`source.namespace-gone: stop`, default; the target is
  kept) or is followed (`follow`).
- materialize (`sweep=True`): upserts and tombstones per `_id`; the
  generation marker tombstones keys the re-sync did not see, i.e. documents
  deleted while the change-stream position was lost.
- sink: `sink.type: mongo` writes with `write_to_mongo` (bulk upserts /
  deletes, retries, optional `sink.version-field` guard); its failed writes
  join the DLQ stream. Any other sink type goes through `pipelines.io`.
  `sink.mirror` (default true): the target mirrors the (single) source
  collection, so when a re-sync completes the writer also deletes target
  documents absent from the source (`MongoWriter.reconcile`): that covers
  documents written by a run killed before its first snapshot, which no
  restored state knows about. It never runs while the source collection is
  absent or is not the one the re-sync scanned (UUID).
- `sink.changes` (optional section, any sink type): the merger's diffs.

Run with `streamforge run customers_cdc` or `python -m bytewax.run
dataflows.pipelines.customers_cdc:flow -r DIR -s 1 -b 0`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.outputs import Sink

from dataflows.config import Config, ConfigError
from dataflows.connectors.mongo import mongo_sink_settings, mongo_source_settings
from dataflows.connectors.mongo.sink import write_to_mongo
from dataflows.connectors.mongo.source import MongoChangeSource
from dataflows.dead_letter import DeadLetter
from dataflows.events import Event
from dataflows.flow import materialize, merge_changes
from dataflows.pipelines.common import ParseOptions, ingest, lazy_flow
from dataflows.pipelines.io import build_dlq_sink, build_sink, build_source, write_output

__all__ = ["NAME", "build_flow"]

NAME = "customers_cdc"


def build_flow(
    cfg: Config,
    *,
    source: Any = None,
    sink: Sink[Any] | None = None,
    dlq_sink: Sink[Any] | None = None,
    changes_sink: Sink[Any] | None = None,
) -> Dataflow:
    """The customers_cdc dataflow; config errors are raised here, naming their key."""
    name = cfg.str("pipeline.name", NAME)
    options = ParseOptions.from_config(cfg, key_field="_id", time_field=None)
    source = source if source is not None else build_source(cfg.section("source"), name)
    dlq_sink = dlq_sink if dlq_sink is not None else build_dlq_sink(cfg.section("dlq"), name)
    mongo_target = sink is None and cfg.str("sink.type", "file") == "mongo"
    target_settings = mongo_sink_settings(cfg.section("sink"), name) if mongo_target else None
    if target_settings is not None and cfg.bool("sink.mirror", True):
        target_settings = replace(target_settings, mirror_of=_mirrored(cfg, source))
    if sink is None and not mongo_target:
        sink = build_sink(cfg.section("sink"), name)
    if changes_sink is None and cfg.has("sink.changes"):
        changes_sink = build_sink(cfg.section("sink.changes"), name)

    flow = Dataflow(name)
    events, ingest_dlq = ingest(flow, source, pipeline=name, options=options)
    table = materialize("materialize", events, pipeline=name, sweep=True)
    dead: list[Stream[DeadLetter]] = [ingest_dlq]
    if target_settings is not None:
        markers = op.filter("markers", events, _is_marker)
        dead.append(write_to_mongo("sink", op.merge("table_and_markers", table, markers), target_settings))
    else:
        assert sink is not None
        write_output("sink", table, sink)
    if changes_sink is not None:
        write_output("changes_sink", merge_changes("merge", events, pipeline=name), changes_sink)
    write_output("dlq_sink", op.merge("dlq", *dead), dlq_sink)
    return flow


def _is_marker(event: Event) -> bool:
    return event.op == "generation"


def _mirrored(cfg: Config, source: Any) -> tuple[str, str, str]:
    """(uri, database, collection) of the one source collection the target mirrors."""
    s = source.settings if isinstance(source, MongoChangeSource) else None
    if s is None:
        s = mongo_source_settings(cfg.section("source"), cfg.str("pipeline.name", NAME))
    if len(s.collections) != 1:
        raise ConfigError(f"sink.mirror: needs exactly one source collection, got {list(s.collections)} "
                          f"(set sink.mirror: false) (in {cfg.origin})")
    return s.uri, s.database, s.collections[0]


__getattr__ = lazy_flow(NAME, build_flow)
