"""StreamForge's Bytewax wiring: the operators that run the pure patterns (the one place they meet).

The pattern modules (`dataflows/patterns/`) are pure state machines; this
module hands them to Bytewax as `StatefulBatchLogic`s (`stateful_batch`: one
`on_batch` call per key and activation) and keys / unkeys per batch
(`flat_map_batch`). Step ids of the stateful steps are those of the code
before issue 11 (`<step>.<pattern>.stateful_batch`), so stored state loads.

| operator | logic | state per key |
|---|---|---|
| `parse_events` | `parse.BatchParser` | - |
| `deduplicate` | `Deduplicator` | `DedupState` / `ShardDedupState` (`shards=N`) |
| `dedup_by_key` | `Deduplicator(identity=...)` | `ShardDedupState` |
| `merge_changes` | `StatefulMerger` | `MergerState` |
| `materialize` | `Materializer`, `ShardMaterializer` | `MaterializedRow`, `ShardState` |
| `analyze_sessions` | `SessionShard` (`SessionAnalyzer`s; `shards=None`: one per key) | `SessionShardState` / `SessionState` |
| `orders_lane` | `OrdersLane` (dedup + hook + merge + materialize) | `OrdersLaneState` |
| `sessions_lane` | `SessionsLane` (dedup + sessions) | `SessionsLaneState` |

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, run_main
    from dataflows.events import Event
    from dataflows.flow import deduplicate

    flow = Dataflow("eg")
    events = op.input("in", flow, TestingSource([Event("k", {}, 0, "e1", "t"), Event("k", {}, 5, "e2", "t")]))
    op.inspect("out", deduplicate("dedup", events, ttl_ms=1000, pipeline="eg"))
    run_main(flow)  # prints only e1's Event: e2 repeats k within the TTL
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from dataflows import metrics
from dataflows.clock import PipelineClock, Wall, as_pipeline_clock
from dataflows.dead_letter import DeadLetter
from dataflows.errors import Guarded
from dataflows.events import Event
from dataflows.parse import BatchParser, StrictLimits, TypeSpec
from dataflows.patterns.dedup import DedupConfig, Deduplicator, DedupState, identity_of, shard_of
from dataflows.patterns.lane import OrdersLane, OrdersLaneConfig, SessionsLane, Transform
from dataflows.patterns.materializer import Materializer, ShardMaterializer, TableChange
from dataflows.patterns.merger import Change, StatefulMerger
from dataflows.patterns.session_shard import SessionShard, SessionShardState
from dataflows.patterns.sessions import (
    LateEvent,
    Session,
    SessionAnalyzer,
    SessionConfig,
    SessionRetraction,
)

__all__ = [
    "OrdersOutputs",
    "SessionOutputs",
    "analyze_sessions",
    "dedup_by_key",
    "deduplicate",
    "key_batch",
    "materialize",
    "merge_changes",
    "orders_lane",
    "parse_events",
    "sessions_lane",
    "split_by_type",
    "split_types",
    "unkey_batch",
]

Builder = Callable[[Any], Any]

# The pure logics are StatefulBatchLogics by shape; Bytewax checks `isinstance`, which a
# virtual subclass (ABC registration) satisfies without the pattern modules importing Bytewax.
for _logic in (Deduplicator, StatefulMerger, Materializer, ShardMaterializer, SessionAnalyzer,
               OrdersLane, SessionsLane, SessionShard):
    op.StatefulBatchLogic.register(_logic)
_DEFAULT_LIMITS = StrictLimits()


def _keyed(batch: list[Event]) -> list[tuple[str, Event]]:
    return [(e.key, e) for e in batch]


def _unkeyed(batch: list[tuple[str, Any]]) -> list[Any]:
    return [v for _, v in batch]


def key_batch(step_id: str, up: Stream[Event]) -> op.KeyedStream[Event]:
    """`(Event.key, event)` pairs, one Python call per batch."""
    return cast(op.KeyedStream[Event], op.flat_map_batch(step_id, up, _keyed))


def unkey_batch(step_id: str, up: op.KeyedStream[Any]) -> Stream[Any]:
    """The values of a keyed stream, one Python call per batch."""
    return op.flat_map_batch(step_id, up, _unkeyed)


class _ShardKeys:
    """`batch -> [(shard name, event)]`: the stable shard (`shard_of`) of each event's identity."""

    __slots__ = ("ident", "shards", "names")

    def __init__(self, ident: Callable[[Event], str], shards: int, what: str) -> None:
        if shards < 1:
            raise ValueError(f"{what} shards must be >= 1, got {shards}")
        self.ident, self.shards = ident, shards
        self.names = [str(i) for i in range(shards)]

    def __call__(self, batch: list[Event]) -> list[tuple[str, Event]]:
        ident, n, names = self.ident, self.shards, self.names
        return [(names[shard_of(ident(e), n)], e) for e in batch]


def _event_key(e: Event) -> str:
    return e.key


def _refuse_per_key_state(step_id: str, state: Any) -> None:
    """A per-key state row in a sharded step (written with `shards=None`): never silently dropped."""
    raise TypeError(
        f"step {step_id!r}: restored state {type(state).__name__} is one key's (written with "
        f"shards=None); re-key the recovery directory first (flow stopped: `streamforge state "
        f"migrate --reshard {step_id}=SHARDS`, dataflows.flow.legacy.shard_per_key_rows) or "
        f"build the step with shards=None")


@operator
def _stateful(step_id: str, up: op.KeyedStream[Any], builder: Builder) -> op.KeyedStream[Any]:
    """`stateful_batch` under the step id `op.stateful` gave it (`<step_id>.stateful_batch`)."""
    return op.stateful_batch("stateful_batch", up, builder)


class _OfType:
    """`batch -> the items of exactly type cls` (or of any other type, `keep=False`)."""

    __slots__ = ("cls", "keep")

    def __init__(self, cls: type, keep: bool) -> None:
        self.cls, self.keep = cls, keep

    def __call__(self, batch: list[Any]) -> list[Any]:
        cls = self.cls
        if self.keep:
            return [x for x in batch if type(x) is cls]
        return [x for x in batch if type(x) is not cls]


@operator
def split_by_type(step_id: str, up: Stream[Any], cls: type) -> op.BranchOut[Any, Any]:
    """`trues`: the items of exactly type `cls`; `falses`: the rest (order kept in each).

    `op.branch` with a `type(x) is cls` predicate, one Python call per batch
    instead of one per item (two list comprehensions).
    """
    return op.BranchOut(op.flat_map_batch("trues", up, _OfType(cls, True)),
                        op.flat_map_batch("falses", up, _OfType(cls, False)))


@operator
def parse_events(step_id: str, up: Stream[Any], *, pipeline: str, key_field: str,
                 time_field: str | None, max_record_bytes: int, op_field: str | None = None,
                 required: Mapping[str, TypeSpec] | None = None,
                 optional: Mapping[str, TypeSpec] | None = None,
                 limits: StrictLimits = _DEFAULT_LIMITS) -> Guarded:
    """Parse JSON records per batch (`parse.BatchParser`; strict JSON within `limits`).

    Emits `ok`: an Event per good record (same event id); `dlq`: a DeadLetter
    per bad record (stage = this step id). Stateless.
    """
    parser = BatchParser(pipeline=pipeline, stage=step_id, source_stage=step_id,
                         key_field=key_field, time_field=time_field,
                         max_record_bytes=max_record_bytes, op_field=op_field, required=required,
                         optional=optional, limits=limits)
    return split_types("split", op.flat_map_batch("parse", up, parser))


@operator
def split_types(step_id: str, up: Stream[Any]) -> Guarded:
    """Events (`ok`) apart from everything else (`dlq`: DeadLetters)."""
    b = split_by_type("events", up, Event)
    return Guarded(b.trues, cast(Stream[DeadLetter], b.falses))


DEFAULT_SHARDS = 64  # Bytewax keys of a sharded step (docs/operations.md, "Pattern wake-ups")


@operator
def deduplicate(step_id: str, up: Stream[Event], *, ttl_ms: int, pipeline: str,
                key: str | Callable[[Event], str] | None = None,
                clock: PipelineClock | Wall | None = None, expire_idle: bool = True,
                shards: int | None = DEFAULT_SHARDS) -> Stream[Event]:
    """Emit the first occurrence of each identity within `ttl_ms` of event time (`Deduplicator`).

    Emits: the input Events that are not duplicates, unchanged, in arrival
    order per identity. State: `shards=N` (default `DEFAULT_SHARDS`): N
    Bytewax keys hold the identities (`shard_of`), `ShardDedupState` each: one
    pending wake-up per shard instead of one per identity (Bytewax scans every
    pending one per activation), but each epoch snapshots every touched shard
    whole. `shards=None`: one Bytewax key per identity (`DedupState`; the
    layout before `shards` became the default: `legacy.shard_per_key_rows`
    re-keys such a recovery directory). Discarded after `ttl_ms` of
    pipeline-time idleness. `clock`: the flow's `PipelineClock` (or a wall
    function, tests). `expire_idle=False` schedules no wake-ups but keeps
    every identity forever: only for a bounded identity space. `shards` is
    fixed per recovery directory.
    """
    evict = metrics.STATE_EVICTIONS.labels(pipeline=pipeline, step=step_id, reason="ttl").inc
    cfg = DedupConfig(ttl_ms, clock=clock, on_evict=evict, expire_idle=expire_idle,
                      sparse_wakeups=True)
    ident = identity_of(key)
    if shards is not None:
        route = _ShardKeys(ident, shards, "dedup")
        where = f"{step_id}.dedup"

        def build_shard(state: Any) -> Deduplicator:
            if type(state) is DedupState:
                _refuse_per_key_state(where, state)
            return Deduplicator(cfg, state, ident)

        routed = cast(op.KeyedStream[Event], op.flat_map_batch("shard", up, route))
        return unkey_batch("unkey", _stateful("dedup", routed, build_shard))

    def by_identity(batch: list[Event]) -> list[tuple[str, Event]]:
        return [(ident(e), e) for e in batch]

    def build(state: Any) -> Deduplicator:
        return Deduplicator(cfg, state)

    keyed = cast(op.KeyedStream[Event], op.flat_map_batch("identity", up, by_identity))
    return unkey_batch("unkey", _stateful("dedup", keyed, build))


def dedup_by_key(step_id: str, up: Stream[Event], *, ttl_ms: int, pipeline: str,
                 identity_field: str, clock: PipelineClock | None = None) -> Stream[Event]:
    """Drop repeated `identity_field` values within `ttl_ms` of event time, in each `Event.key`'s
    lane (state keyed by `Event.key`, the key's identities inside: `ShardDedupState`).

    Emits the first occurrences, unchanged and in the key's arrival order (a
    keyed step after it sees the source's order on any number of workers).
    """
    evict = metrics.STATE_EVICTIONS.labels(pipeline=pipeline, step=step_id, reason="ttl").inc
    cfg = DedupConfig(ttl_ms, on_evict=evict, clock=clock, sparse_wakeups=True)
    ident = identity_of(identity_field)

    def build(state: Any) -> Deduplicator:
        return Deduplicator(cfg, state, ident)

    keyed = key_batch(f"{step_id}_key", up)
    return unkey_batch(f"{step_id}_unkey", _stateful(step_id, keyed, build))


@operator
def merge_changes(step_id: str, up: Stream[Event], *, pipeline: str) -> Stream[Change]:
    """Emit a `Change` per created / updated / deleted document, keyed by `Event.key`.

    State per key: `MergerState` (the previous document); discarded on delete.
    """
    evict = metrics.STATE_EVICTIONS.labels(pipeline=pipeline, step=step_id, reason="delete").inc

    def build(state: Any) -> StatefulMerger:
        return StatefulMerger(step_id, state, evict)

    return unkey_batch("unkey", _stateful("merge", key_batch("key", up), build))


@operator
def materialize(step_id: str, up: Stream[Event], *, pipeline: str, sweep: bool = False,
                shards: int = 64) -> Stream[TableChange]:
    """Emit upserts and tombstones of the latest value per `Event.key`.

    State: `MaterializedRow` per key (`sweep=False`) or `ShardState` per shard
    (`sweep=True`, every generation marker broadcast to all shards; see
    `dataflows/patterns/materializer.py`).
    """
    if shards < 1:
        raise ValueError(f"materialize shards must be >= 1, got {shards}")
    evict = metrics.STATE_EVICTIONS.labels(pipeline=pipeline, step=step_id, reason="delete").inc
    if sweep:
        names = [str(i) for i in range(shards)]

        def route(batch: list[Event]) -> list[tuple[str, Event]]:
            out: list[tuple[str, Event]] = []
            for e in batch:
                if e.op == "generation":
                    out.extend((name, e) for name in names)
                else:
                    out.append((names[shard_of(e.key, shards)], e))
            return out

        def build_shard(state: Any) -> ShardMaterializer:
            return ShardMaterializer(step_id, state, evict)

        keyed = cast(op.KeyedStream[Event], op.flat_map_batch("shard", up, route))
        return unkey_batch("unkey", _stateful("materialize", keyed, build_shard))

    def build(state: Any) -> Materializer:
        return Materializer(step_id, state, evict)

    return unkey_batch("unkey", _stateful("materialize", key_batch("key", up), build))


@dataclass(frozen=True)
class SessionOutputs:
    """The two outputs of `analyze_sessions` / `sessions_lane`; unpacks as `(sessions, late)`."""

    sessions: Stream[Session | SessionRetraction]
    late: Stream[LateEvent]

    def __iter__(self) -> Iterator[Stream[Any]]:
        return iter((self.sessions, self.late))


def _session_config(step_id: str, pipeline: str, gap_ms: int, allowed_lateness_ms: int,
                    aggregate: Callable[[Any, Event], Any] | None, initial: Callable[[], Any] | None,
                    merge: Callable[[Any, Any], Any] | None, advance_on_idle: bool,
                    clock: PipelineClock | Wall | None, sparse: bool) -> SessionConfig:
    return SessionConfig(
        gap_ms, allowed_lateness_ms, aggregate=aggregate, initial=initial, merge=merge,
        clock=as_pipeline_clock(clock) if advance_on_idle else None,
        on_late=metrics.LATE_EVENTS.labels(pipeline=pipeline, step=step_id).inc,
        on_evict=metrics.STATE_EVICTIONS.labels(pipeline=pipeline, step=step_id,
                                                reason="sessions_closed").inc,
        sparse_wakeups=sparse,
    )


@operator
def analyze_sessions(step_id: str, up: Stream[Event], *, gap_ms: int, allowed_lateness_ms: int,
                     pipeline: str, aggregate: Callable[[Any, Event], Any] | None = None,
                     initial: Callable[[], Any] | None = None,
                     merge: Callable[[Any, Any], Any] | None = None,
                     advance_on_idle: bool = True,
                     clock: PipelineClock | Wall | None = None,
                     shards: int | None = DEFAULT_SHARDS) -> SessionOutputs:
    """Sessions per `Event.key` (`SessionAnalyzer`, see `dataflows/patterns/sessions.py`).

    Emits `Session`s and `SessionRetraction`s (an upsert/retract stream by
    `session_id`) on `.sessions` and `LateEvent`s on `.late`, per key in the
    key's order. State: `shards=N` (default `DEFAULT_SHARDS`): N Bytewax keys
    (`shard_of(Event.key)`), a `SessionShard` each (`SessionShardState`: the
    `SessionState` of each of its keys; one pending wake-up per shard).
    `shards=None`: a `SessionState` per Bytewax key (the layout before;
    `legacy.shard_per_key_rows` re-keys it). A key is dropped once all its
    sessions are; `shards` is fixed per recovery directory.
    """
    cfg = _session_config(step_id, pipeline, gap_ms, allowed_lateness_ms, aggregate, initial, merge,
                          advance_on_idle, clock, sparse=True)
    if shards is not None:
        route = _ShardKeys(_event_key, shards, "sessions")
        where = f"{step_id}.sessions"

        def build_shard(state: Any) -> SessionShard:
            if state is not None and type(state) is not SessionShardState:
                _refuse_per_key_state(where, state)
            return SessionShard(cfg, state)

        routed = cast(op.KeyedStream[Event], op.flat_map_batch("shard", up, route))
        out = unkey_batch("unkey", _stateful("sessions", routed, build_shard))
    else:
        def build(state: Any) -> SessionAnalyzer:
            return SessionAnalyzer(cfg, state)

        out = unkey_batch("unkey", _stateful("sessions", key_batch("key", up), build))
    split = split_by_type("split", out, LateEvent)
    return SessionOutputs(split.falses, split.trues)


@dataclass(frozen=True)
class OrdersOutputs:
    """The outputs of `orders_lane`: table changes, Changes (None unless asked for), dead letters."""

    table: Stream[TableChange]
    changes: Stream[Change] | None
    dlq: Stream[DeadLetter]


def _nothing(_batch: list[Any]) -> list[Any]:
    return []


@operator
def orders_lane(step_id: str, up: Stream[Event], *, pipeline: str, ttl_ms: int, id_field: str,
                with_changes: bool, transform: Transform | None = None,
                merge_step: str, materialize_step: str,
                clock: PipelineClock | None = None) -> OrdersOutputs:
    """Dedup (by `id_field`, `ttl_ms`), the enrich `transform`, merge and materialize of each
    `Event.key` in ONE stateful step (`OrdersLane`; state per key: `OrdersLaneState`).

    Emits `.table` (TableChange), `.changes` (Change, only with `with_changes=True`)
    and `.dlq` (the transform's dead letters). `merge_step` / `materialize_step`
    name the derived ids (`<event id>/<step>`, those of the separate steps).
    """
    evict_ttl = metrics.STATE_EVICTIONS.labels(pipeline=pipeline, step=step_id, reason="ttl").inc
    evict_delete = metrics.STATE_EVICTIONS.labels(pipeline=pipeline, step=step_id, reason="delete").inc
    cfg = OrdersLaneConfig(DedupConfig(ttl_ms, on_evict=evict_ttl, clock=clock), id_field,
                           merge_suffix="/" + merge_step if with_changes else None,
                           materialize_suffix="/" + materialize_step, transform=transform,
                           on_delete=evict_delete)

    def build(state: Any) -> OrdersLane:
        return OrdersLane(cfg, state)

    out = unkey_batch("unkey", _stateful("lane", key_batch("key", up), build))
    table = split_by_type("table", out, TableChange)
    if not with_changes:
        return OrdersOutputs(table.trues, None, cast(Stream[DeadLetter], table.falses))
    if transform is None:  # no dead letters without a hook: the rest are Changes
        none = cast(Stream[DeadLetter], op.flat_map_batch("no_dlq", table.falses, _nothing))
        return OrdersOutputs(table.trues, table.falses, none)
    rest = split_by_type("changes", table.falses, Change)
    return OrdersOutputs(table.trues, rest.trues, cast(Stream[DeadLetter], rest.falses))


@operator
def sessions_lane(step_id: str, up: Stream[Event], *, pipeline: str, gap_ms: int,
                  allowed_lateness_ms: int, ttl_ms: int | None, id_field: str | None,
                  aggregate: Callable[[Any, Event], Any] | None = None,
                  initial: Callable[[], Any] | None = None,
                  merge: Callable[[Any, Any], Any] | None = None,
                  advance_on_idle: bool = True,
                  clock: PipelineClock | None = None) -> SessionOutputs:
    """Dedup (when `ttl_ms` is set, by `id_field`) and sessions of each `Event.key` in ONE
    stateful step (`SessionsLane`; state per key: `SessionsLaneState`); outputs as
    `analyze_sessions`. One pipeline clock for both (`clock`)."""
    clock = as_pipeline_clock(clock)
    scfg = _session_config(step_id, pipeline, gap_ms, allowed_lateness_ms, aggregate, initial, merge,
                           advance_on_idle, clock, sparse=False)
    dedup = None
    if ttl_ms is not None and id_field:
        evict = metrics.STATE_EVICTIONS.labels(pipeline=pipeline, step=step_id, reason="ttl").inc
        dedup = (DedupConfig(ttl_ms, on_evict=evict, clock=clock), id_field)

    def build(state: Any) -> SessionsLane:
        return SessionsLane(dedup, scfg, state)

    out = unkey_batch("unkey", _stateful("lane", key_batch("key", up), build))
    split = split_by_type("split", out, LateEvent)
    return SessionOutputs(split.falses, split.trues)
