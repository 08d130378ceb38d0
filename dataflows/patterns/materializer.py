"""Materializer: the latest value per key as a stream of table changes.

Emits `TableChange("upsert", key, value)` when a key's value changes (an equal
value, e.g. a replayed snapshot, emits nothing) and
`TableChange("tombstone", key, None)` for `op == "delete"`, after which the
key's state is discarded (`state_evictions`, reason `delete`). A delete always
emits a tombstone, even for a key the step does not know: the table
downstream may still hold it (e.g. after a fresh start); sinks treat a
tombstone of a missing row as a no-op.

Two modes:

- `sweep=False` (fast path): state per key (`MaterializedRow`); generation
  markers (`op == "generation"`) are ignored.
- `sweep=True`: generation sweep after a re-sync. State is kept per *shard*
  (`zlib.crc32(key) % shards`, `ShardState` = rows of all its keys) and every
  marker is broadcast to all shards, because Bytewax state is per key and a
  marker cannot reach keys otherwise. Trade-off: each epoch snapshots whole
  shards (more bytes per snapshot than per-key state, fewer and bigger rows in
  the recovery store), parallelism is capped at `shards` and markers cost
  `shards` copies; `shards` is part of the state layout: keep it fixed for a
  recovery directory.

Generation rule (the Mongo SnapshotLoader's contract): snapshot events carry
header `("sf-generation", b"<G>")`; the marker
`Event(op="generation", value={"generation": G, "complete": True, ...})`
carries `event_time_ms` = the time generation G started (its change-stream
start position). On the marker, every row of the same `Event.source` whose
last snapshot generation is `< G` and whose last change event has an event
time `<` that start gets a tombstone: it was neither seen by the re-sync nor
changed since it began. Markers whose `complete` is not exactly True are
ignored: a scan that cannot prove it saw every document must not sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dataflows.events import Event, derive_id
from dataflows.patterns.dedup import shard_of
from dataflows.records import frozen_factory, tuple_pickled

__all__ = [
    "MaterializedRow",
    "Materializer",
    "ShardMaterializer",
    "ShardState",
    "TableChange",
    "shard_of",
    "snapshot_generation",
]

_EMPTY: tuple[()] = ()
_NEVER = -(2**63)
GENERATION_HEADER = "sf-generation"


@tuple_pickled
@dataclass(frozen=True, slots=True)
class TableChange:
    """One change of the materialized table."""

    kind: str  # 'upsert' | 'tombstone'
    key: str
    value: Any  # None for tombstone
    event_id: str
    event_time_ms: int


@dataclass(frozen=True, slots=True)
class MaterializedRow:
    """Snapshot of one key (fast path): its latest value."""

    value: Any
    version: int = 1


@dataclass(frozen=True, slots=True)
class ShardState:
    """Snapshot of one shard: `rows[key] = (value, snapshot_generation, change_time_ms, source)`."""

    rows: dict[str, tuple[Any, int, int, str]]
    version: int = 1


_change = frozen_factory(TableChange)


def snapshot_generation(event: Event) -> int:
    """The generation in the event's `sf-generation` header (0 when absent or unreadable)."""
    for name, raw in event.headers:
        if name == GENERATION_HEADER:
            try:
                return int(raw)
            except ValueError:
                return 0
    return 0


def _marker(event: Event) -> tuple[int, bool]:
    """(generation, complete) of a generation marker."""
    v = event.value if isinstance(event.value, dict) else {}
    try:
        gen = int(v.get("generation", 0))
    except (TypeError, ValueError):
        gen = 0
    return gen, v.get("complete") is True  # only a proven-complete re-sync may sweep


class Materializer:
    """Latest value of one key (fast path; a Bytewax `StatefulLogic` by shape)."""

    STATE_VERSION = 1
    __slots__ = ("suffix", "value", "known", "on_delete")

    def __init__(self, step_id: str, state: MaterializedRow | None = None,
                 on_delete: Callable[[], None] | None = None) -> None:
        self.suffix = "/" + step_id  # derived ids: f"{parent}/{step}" (events.derive_id)
        self.on_delete = on_delete
        self.known = state is not None
        self.value: Any = None if state is None else state.value

    def on_item(self, event: Event) -> tuple[tuple[TableChange, ...], bool]:
        opn = event.op
        if opn == "delete":
            if self.known and self.on_delete is not None:
                self.on_delete()
            return (_change("tombstone", event.key, None, event.event_id + self.suffix,
                            event.event_time_ms),), True
        if opn == "generation":
            return _EMPTY, not self.known
        new = event.value
        if self.known and new == self.value:
            return _EMPTY, False
        self.known = True
        self.value = new
        return (_change("upsert", event.key, new, event.event_id + self.suffix,
                        event.event_time_ms),), False

    def on_batch(self, events: list[Event]) -> tuple[list[TableChange], bool]:
        """`on_item` over a batch: the upserts / tombstones in order; discard when the last
        event deleted the key."""
        out: list[TableChange] = []
        suffix = self.suffix
        for event in events:
            opn = event.op
            if opn is not None:
                if opn == "delete":
                    if self.known and self.on_delete is not None:
                        self.on_delete()
                    self.known = False
                    self.value = None
                    out.append(_change("tombstone", event.key, None, event.event_id + suffix,
                                       event.event_time_ms))
                    continue
                if opn == "generation":
                    continue
            new = event.value
            if self.known and new == self.value:
                continue
            self.known = True
            self.value = new
            out.append(_change("upsert", event.key, new, event.event_id + suffix, event.event_time_ms))
        return out, not self.known

    def on_notify(self) -> tuple[tuple[()], bool]:
        return _EMPTY, not self.known

    def on_eof(self) -> tuple[tuple[()], bool]:
        return _EMPTY, not self.known

    def notify_at(self) -> None:
        return None

    def snapshot(self) -> MaterializedRow:
        return MaterializedRow(self.value, self.STATE_VERSION)


class ShardMaterializer:
    """Latest values of all keys of one shard, with the generation sweep."""

    STATE_VERSION = 1
    __slots__ = ("step_id", "rows", "on_delete")

    def __init__(self, step_id: str, state: ShardState | None = None,
                 on_delete: Callable[[], None] | None = None) -> None:
        self.step_id = step_id
        self.on_delete = on_delete
        self.rows: dict[str, tuple[Any, int, int, str]] = {} if state is None else dict(state.rows)

    def on_item(self, event: Event) -> tuple[list[TableChange] | tuple[TableChange, ...], bool]:
        opn = event.op
        if opn == "generation":
            return self._sweep(event), not self.rows
        key = event.key
        rows = self.rows
        row = rows.get(key)
        if opn == "delete":
            if row is not None:
                del rows[key]
                if self.on_delete is not None:
                    self.on_delete()
            return (TableChange("tombstone", key, None, derive_id(event.event_id, self.step_id),
                                event.event_time_ms),), not rows
        new = event.value
        if opn == "snapshot":
            gen = snapshot_generation(event)
            changed_ms = _NEVER if row is None else row[2]
        else:
            gen = 0 if row is None else row[1]
            changed_ms = event.event_time_ms if row is None else max(row[2], event.event_time_ms)
        rows[key] = (new, gen, changed_ms, event.source)
        if row is not None and row[0] == new:
            return _EMPTY, False
        return (TableChange("upsert", key, new, derive_id(event.event_id, self.step_id),
                            event.event_time_ms),), False

    def _sweep(self, marker: Event) -> list[TableChange]:
        gen, complete = _marker(marker)
        if not complete:
            return []
        started_ms = marker.event_time_ms
        source = marker.source
        gone = [k for k, (_, g, changed_ms, src) in self.rows.items()
                if src == source and g < gen and changed_ms < started_ms]
        out = []
        for k in sorted(gone):
            del self.rows[k]
            if self.on_delete is not None:
                self.on_delete()
            out.append(TableChange("tombstone", k, None,
                                   derive_id(marker.event_id, f"{self.step_id}:{k}"), started_ms))
        return out

    def on_batch(self, events: list[Event]) -> tuple[list[TableChange], bool]:
        """`on_item` over a batch (markers sweep in their place)."""
        out: list[TableChange] = []
        for event in events:
            out.extend(self.on_item(event)[0])
        return out, not self.rows

    def on_notify(self) -> tuple[tuple[()], bool]:
        return _EMPTY, not self.rows

    def on_eof(self) -> tuple[tuple[()], bool]:
        return _EMPTY, not self.rows

    def notify_at(self) -> None:
        return None

    def snapshot(self) -> ShardState:
        return ShardState(dict(self.rows), self.STATE_VERSION)


def __getattr__(name: str) -> Any:
    """`materialize`, the Bytewax operator, lives in `dataflows.flow` (imported on use)."""
    if name == "materialize":
        from dataflows.flow import materialize

        return materialize
    raise AttributeError(name)
