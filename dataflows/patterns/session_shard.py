"""SessionShard: the sessions of many keys in one Bytewax key, with one wake-up for all of them.

Bytewax 0.21.1 keeps a pending wake-up per Bytewax key and scans all of them
on every activation of the step (`src/operators.rs`, `stateful_batch`), so a
`SessionAnalyzer` per key with idle close pays that scan for every open key
(`bench/patterns.py`: `bare_timer`). `analyze_sessions(shards=N)` routes each
`Event.key` to one of N shards (`shard_of`, crc32: the same in every
process); a shard holds a `SessionAnalyzer` per key (the one state machine,
unchanged: same sessions, retractions, late events, per key in the same
order) and a heap of the keys' wanted wake-up times (a timer wheel), and asks
Bytewax for one wake-up: the earliest of its keys'. When it fires, every key
whose time has come gets its `on_notify` (the analyzer re-checks pipeline
time, so an early call changes nothing: `dataflows/clock.py`); a key without
sessions left is dropped from the shard, a shard without keys is discarded.

Heap entries are `(wanted real ms, key)`; the analyzer's `due_ms` (its Alarm
slot, unused by Bytewax here) mirrors the entry that counts for it (0: none).
A key re-asks only when it has none or wants one earlier than `slack_ms`
before it; a stale entry (the key moved on, or was dropped) is skipped.

State (`snapshot`): `SessionShardState(keys={key: (key, spans, watermark_ms,
wall_ms)}, clock_ms, version)`: each key's `SessionState` fields as a plain
tuple (pickled in C, no per-object Python call), and the pipeline time of the
snapshot once. Each epoch snapshots every shard touched in it whole, so a
shard keeps each key's tuple from its last snapshot and rebuilds only the
keys touched since: the Python cost per epoch is that of the touched keys,
the pickling that of the whole shard (docs/operations.md, "Shards").

    >>> from dataflows.events import Event
    >>> from dataflows.patterns.sessions import SessionConfig
    >>> s = SessionShard(SessionConfig(10, 0))
    >>> [x.session_id for x in s.on_batch([Event("a", {}, 0, "e1", "t"), Event("a", {}, 20, "e2", "t")])[0]]
    ['a:0']
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dataflows.events import Event
from dataflows.patterns.alarm import Alarm
from dataflows.patterns.sessions import SessionAnalyzer, SessionConfig, SessionState, SpanTuple

__all__ = ["SessionShard", "SessionShardState"]

_EMPTY: tuple[()] = ()


KeyTuple = tuple[str, tuple[SpanTuple, ...], int, int]  # SessionState's key, spans, watermark_ms, wall_ms


@dataclass(frozen=True, slots=True)
class SessionShardState:
    """Snapshot of one shard: `keys[key]` = `(key, spans, watermark_ms, wall_ms)` of each key it
    holds (the fields of its `SessionState`), `clock_ms` the pipeline time of the snapshot."""

    keys: dict[str, KeyTuple]
    clock_ms: int | None
    version: int = 1

    def key_state(self, key: str) -> SessionState:
        """The `SessionState` of one of its keys."""
        k, spans, wm, wall = self.keys[key]
        return SessionState(k, spans, wm, wall, SessionAnalyzer.STATE_VERSION, self.clock_ms)


class SessionShard(Alarm):
    """The `SessionAnalyzer`s of the keys of one shard (a `StatefulBatchLogic` by shape).

    `on_batch(events)` returns what the keys' analyzers emit, in arrival order
    (per key exactly the analyzer's output); `on_notify()` the idle closes of
    the keys whose wake-up time has come; `on_eof()` every key's EOF flush.
    """

    STATE_VERSION = 1
    __slots__ = ("cfg", "keys", "heap", "snaps")

    def __init__(self, cfg: SessionConfig, state: SessionShardState | None = None) -> None:
        self.cfg = cfg
        self.due_ms, self.at = 0, None  # the shard's own wake-up (Alarm)
        self.keys: dict[str, SessionAnalyzer] = {}
        self.heap: list[tuple[int, str]] = []
        # key -> its tuple as of the last snapshot (absent: touched since, or new)
        self.snaps: dict[str, KeyTuple] = {}
        if state is not None:
            for key in state.keys:
                a = self.keys[key] = SessionAnalyzer(cfg, state.key_state(key))
                self._arm(key, a)

    def _arm(self, key: str, a: SessionAnalyzer) -> None:
        """Push the key's wanted wake-up unless an entry no later than it (+ slack) is pending."""
        want = a.wake_wall_ms()
        if want is None:
            return
        due = a.due_ms
        if due and due <= want + self.cfg.slack_ms:
            return
        a.due_ms = want
        heap = self.heap
        heapq.heappush(heap, (want, key))
        if len(heap) > 4 * len(self.keys) + 64:  # mostly stale entries: rebuild from the keys
            self.heap = [(x.due_ms, k) for k, x in self.keys.items() if x.due_ms]
            heapq.heapify(self.heap)

    def on_item(self, event: Event) -> tuple[Any, bool]:
        key = event.key
        keys = self.keys
        a = keys.get(key)
        if a is None:
            a = keys[key] = SessionAnalyzer(self.cfg)
        self.snaps.pop(key, None)
        out, gone = a.on_item(event)
        if gone:
            del keys[key]  # its heap entry goes stale; a later event starts the key afresh
        elif self.cfg.clock is not None:
            self._arm(key, a)
        return out, not keys

    def on_batch(self, events: list[Event]) -> tuple[list[Any], bool]:
        out: list[Any] = []
        on_item = self.on_item
        for event in events:
            items, _ = on_item(event)
            if items:
                out.extend(items)
        return out, not self.keys

    def on_notify(self) -> tuple[list[Any], bool]:
        self.fired()
        clock = self.cfg.clock
        out: list[Any] = []
        if clock is None:
            return out, not self.keys
        real_now = clock.now() + clock.real_delta_ms
        heap, keys = self.heap, self.keys
        due: list[str] = []
        while heap and heap[0][0] <= real_now:
            want, key = heapq.heappop(heap)
            a = keys.get(key)
            if a is not None and a.due_ms == want:
                a.due_ms = 0
                due.append(key)
        snaps = self.snaps
        for key in due:
            a = keys[key]
            snaps.pop(key, None)
            items, gone = a.on_notify()
            if items:
                out.extend(items)
            if gone:
                del keys[key]
            else:
                self._arm(key, a)
        return out, not keys

    def on_eof(self) -> tuple[list[Any], bool]:
        out: list[Any] = []
        self.snaps.clear()  # emitting marks sessions clean: every key changes
        for a in self.keys.values():
            items, _ = a.on_eof()
            out.extend(items)
        return out, not self.keys

    def notify_at(self) -> datetime | None:
        heap = self.heap
        if not heap:
            return None
        if self.cfg.sparse_wakeups:
            return self.request(heap[0][0], self.cfg.slack_ms)
        return self.schedule(heap[0][0], self.cfg.slack_ms)

    def snapshot(self) -> SessionShardState:
        snaps = self.snaps
        if len(snaps) != len(self.keys):
            for key, a in self.keys.items():
                if key not in snaps:
                    snaps[key] = _key_tuple(a)
        clock = self.cfg.clock
        return SessionShardState(dict(snaps), None if clock is None else clock.now(), self.STATE_VERSION)


def _key_tuple(a: SessionAnalyzer) -> KeyTuple:
    """`(key, spans, watermark_ms, wall_ms)` of a key's analyzer (its `SessionState` fields)."""
    assert a.key is not None and a.wm is not None
    return (a.key, a.span_tuples(), a.wm, a.wall_ms)
