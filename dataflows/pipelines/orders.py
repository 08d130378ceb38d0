"""The orders pipeline: order events -> a deduplicated, merged, materialized table.

    source -> parse -> lane: dedup -> [enrich hook] -> merge       -> changes sink (optional)
                                                   \\-> materialize -> sink (table changes)
    every dead letter (source, parse, hook) -> one DLQ sink

The lane is ONE stateful step per order (`dataflows.flow.orders_lane`,
`patterns/lane.py`): dedup, hook, merge and materialize run in sequence on
each order's events, with one state object per order (its event ids and its
current document, stored once for merge and materialize). With
`patterns.materializer.sweep: true` the steps stay separate (dedup in the
order's lane, then the sharded sweep materializer and the merger side by side).

- parse: key `parse.key-field` (order_id), time `parse.time-field` (ts),
  op `parse.op-field` (op; `delete` makes a tombstone), the order event's own
  id `parse.id-field` (event_id, required: it is the dedup identity);
  `amount` must be a number and `status` a string when present.
- dedup (`patterns.dedup.ttl`, by event time): a redelivered order event (same
  id) is dropped. The Deduplicator runs *in the order's lane* (state keyed by
  order, its event ids inside): keying it by event id would send the events of one order through different
  workers, and the merge / materialize steps after it would see them in a
  different order than the source's (a wrong final table on 2+ workers).
- enrich (`patterns.enrich: module:function`, optional): a user hook
  `Event -> Event | dict` (a dict replaces the value), run after dedup so a
  redelivery is not enriched twice; a raising hook makes a USER_FUNCTION
  dead letter (stage `<pipeline>.enrich`).
- merge: per order, a Change (created / updated / deleted, with the changed
  fields) -> `sink.changes-path` (JSONL) or `sink.changes-topic` (kafka) when set.
- materialize: per order, TableChange upsert / tombstone -> `sink`
  (`patterns.materializer.sweep: true` tombstones keys missing from a Mongo
  re-sync, with `patterns.materializer.shards`).

Run with `streamforge run orders` (or `python -m bytewax.run
dataflows.pipelines.orders:flow`); `flow` is built from `$STREAMFORGE_CONFIG`
or config/orders.yaml.
"""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import Sink

from dataflows.clock import PipelineClock
from dataflows.config import Config, ConfigError
from dataflows.flow import dedup_by_key, materialize, merge_changes, orders_lane
from dataflows.pipelines.common import (
    HookTransform,
    ParseOptions,
    apply_hook,
    dedup_ttl_ms,
    ingest,
    lazy_flow,
    load_hook,
)
from dataflows.pipelines.io import (
    build_changes_sink,
    build_dlq_sink,
    build_sink,
    build_source,
    write_output,
)

__all__ = ["build_flow"]

NAME = "orders"
OPTIONAL_TYPES: dict[str, Any] = {"amount": (int, float), "status": str}


def build_flow(
    cfg: Config,
    *,
    source: Any = None,
    sink: Sink[Any] | None = None,
    dlq_sink: Sink[Any] | None = None,
    changes_sink: Sink[Any] | None = None,
) -> Dataflow:
    """The orders dataflow; every config error is raised here, naming its key."""
    name = cfg.str("pipeline.name", NAME)
    options = ParseOptions.from_config(cfg, key_field="order_id", time_field="ts",
                                       op_field="op", id_field="event_id")
    if not options.id_field:
        raise ConfigError(f"parse.id-field: the orders pipeline needs the event id field (in {cfg.origin})")
    ttl_ms = dedup_ttl_ms(cfg, "1h")
    assert ttl_ms is not None  # it has a default
    sweep = cfg.bool("patterns.materializer.sweep", False)
    shards = cfg.int("patterns.materializer.shards", 64, minimum=1)
    hook = load_hook(cfg, "patterns.enrich")
    source = source if source is not None else build_source(cfg.section("source"), name)
    sink = sink if sink is not None else build_sink(cfg.section("sink"), name)
    dlq_sink = dlq_sink if dlq_sink is not None else build_dlq_sink(cfg.section("dlq"), name)
    if changes_sink is None:
        changes_sink = build_changes_sink(cfg.section("sink"), name)

    flow = Dataflow(name)
    events, ingest_dlq = ingest(flow, source, pipeline=name, options=options, optional=OPTIONAL_TYPES)
    if sweep:  # the generation sweep keeps whole shards of keys: separate steps
        unique = dedup_by_key("dedup", events, ttl_ms=ttl_ms, pipeline=name,
                              identity_field=options.id_field)
        enriched, hook_dlq = apply_hook("enrich", unique, hook, pipeline=name)
        table = materialize("materialize", enriched, pipeline=name, sweep=True, shards=shards)
        if changes_sink is not None:
            write_output("changes_sink", merge_changes("merge", enriched, pipeline=name), changes_sink)
    else:
        transform = None if hook is None else HookTransform(hook, f"{name}.enrich", name)
        lane = orders_lane("lane", events, pipeline=name, ttl_ms=ttl_ms, id_field=options.id_field,
                           with_changes=changes_sink is not None, transform=transform,
                           merge_step=f"{name}.merge", materialize_step=f"{name}.materialize",
                           clock=PipelineClock())
        table, hook_dlq = lane.table, lane.dlq
        if lane.changes is not None and changes_sink is not None:
            write_output("changes_sink", lane.changes, changes_sink)
    write_output("sink", table, sink)
    write_output("dlq_sink", op.merge("dlq", ingest_dlq, hook_dlq), dlq_sink)
    return flow


__getattr__ = lazy_flow(NAME, build_flow)
