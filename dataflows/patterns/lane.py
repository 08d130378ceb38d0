"""Keyed lanes: a pipeline's stateful patterns that share a key, run as one state machine per key.

One Bytewax stateful step per key instead of one per pattern: the events of
a key are keyed once, cross one step, and the key keeps one state object.
Composed from the pure pattern classes (`Deduplicator`, `StatefulMerger`'s
`apply`, the Materializer's rule, `SessionAnalyzer`); no Bytewax here (the
operators are `dataflows.flow.orders_lane` / `sessions_lane`).

`OrdersLane` (the orders pipeline), per order key:

    dedup (event ids, TTL) -> [enrich hook] -> merge (Change) + materialize (TableChange)

The merger's previous document and the Materializer's latest value are the
same document, stored once (`OrdersLaneState.value`). Emits, in input
order, for each event that is not a duplicate: a `DeadLetter` if the hook
failed; else `Change` (only with `changes=True`) then `TableChange`, exactly
what the separate steps emitted (same ids: `<event id>/<merge step>`,
`<event id>/<materialize step>`). A hook must keep the event's key (a hook
that changes it is a USER_FUNCTION dead letter: the key's lane owns the
document).

`SessionsLane` (the sessions pipeline), per user key:
`[dedup] -> SessionAnalyzer`; emits what the analyzer emits (Sessions,
SessionRetractions, LateEvents).

Wake-ups (Bytewax scans every pending one on each activation, see
`alarm.py`): an orders key asks for one only while it has no document but
still has dedup identities (a deleted order: the wake-up discards it); a key
with a document is never discarded, so its expired identities are dropped
when it is snapshotted or holds 16 of them (they count as absent anyway: the
dedup decision checks the idle time itself). A sessions key asks for one (the earliest of its
parts, sparse) while it has sessions or identities.

    >>> from dataflows.events import Event
    >>> from dataflows.patterns.dedup import DedupConfig
    >>> cfg = OrdersLaneConfig(DedupConfig(60_000, clock=lambda: 0), "event_id",
    ...                        merge_suffix=None, materialize_suffix="/orders.materialize")
    >>> e = Event("o1", {"event_id": "a", "status": "new"}, 0, "file:x:1", "file:x")
    >>> [c.kind for c in OrdersLane(cfg).on_batch([e, e])[0]]  # the repeat is dropped
    ['upsert']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dataflows.clock import setstate_with_defaults
from dataflows.events import Event
from dataflows.patterns.alarm import Alarm
from dataflows.patterns.dedup import (
    DedupConfig,
    Deduplicator,
    ShardDedupState,
    identity_of,
    restore_seen,
)
from dataflows.patterns.diff import differing_paths, top_level_paths
from dataflows.patterns.materializer import TableChange
from dataflows.patterns.merger import Change
from dataflows.patterns.sessions import SessionAnalyzer, SessionConfig, SessionState
from dataflows.records import frozen_factory, tuple_pickled

__all__ = [
    "OrdersLane",
    "OrdersLaneConfig",
    "OrdersLaneState",
    "SessionsLane",
    "SessionsLaneState",
    "orders_state_from_steps",
    "sessions_state_from_steps",
]

_EMPTY: tuple[()] = ()
_EXPIRE_AT = 16  # identities of a key with a document before a batch drops the expired ones
_change = frozen_factory(Change)
_table = frozen_factory(TableChange)
Transform = Callable[[Event], Any]  # Event -> Event, or a DeadLetter (the hook failed)


@tuple_pickled  # pickled per dirty key per epoch (and loaded at a restore or a move)
@dataclass(frozen=True, slots=True)
class OrdersLaneState:
    """Snapshot of one order: its dedup identities and its current document.

    `seen`: `{event id: (anchor_ms, last_seen pipeline ms)}`, oldest first;
    `known`: the key has a document (`value`; None is a document too);
    `clock_ms`: the pipeline time of the snapshot.
    """

    seen: dict[str, tuple[int, int]]
    value: Any
    known: bool
    version: int = 1
    clock_ms: int | None = None

    __setstate__ = setstate_with_defaults


@dataclass(frozen=True, slots=True)
class SessionsLaneState:
    """Snapshot of one user: its dedup identities (None without dedup) and its sessions."""

    dedup: ShardDedupState | None
    sessions: SessionState | None
    version: int = 1


_orders_state = frozen_factory(OrdersLaneState)


class OrdersLaneConfig:
    """Settings shared by every key of one orders lane."""

    __slots__ = ("dedup", "identity", "transform", "merge_suffix", "materialize_suffix", "on_delete",
                 "clock")

    def __init__(self, dedup: DedupConfig, id_field: str, *, merge_suffix: str | None,
                 materialize_suffix: str, transform: Transform | None = None,
                 on_delete: Callable[[], None] | None = None) -> None:
        self.dedup = dedup
        self.clock = dedup.clock  # pipeline time (read once per batch; `now` changes at a restore)
        self.identity = identity_of(id_field)
        self.transform = transform
        self.merge_suffix = merge_suffix  # None: no Change output
        self.materialize_suffix = materialize_suffix
        self.on_delete = on_delete


class OrdersLane(Deduplicator):
    """Dedup, enrich, merge and materialize of one order key (a `StatefulBatchLogic` by shape).

    The lane *is* the key's Deduplicator (of its event ids; `cfg` is the
    `DedupConfig`, `lane` the `OrdersLaneConfig`) plus the document: one
    object per key.
    """

    STATE_VERSION = 1
    __slots__ = ("lane", "value", "known", "shared", "fresh_until")

    def __init__(self, cfg: OrdersLaneConfig, state: OrdersLaneState | None = None) -> None:
        super().__init__(cfg.dedup, None, cfg.identity)
        self.lane = cfg
        self.known = False
        self.value: Any = None
        # `seen` is also the last snapshot's (or the restored state's): copy it before a change.
        self.shared = False
        # No identity is idle for the TTL before this pipeline time (the oldest sighting's
        # expiry, or earlier); None: no identities.
        self.fresh_until: int | None = None
        if state is not None:
            self.seen, self.shared = state.seen, True
            self.known, self.value = state.known, state.value
            self._fresh_from_oldest()
            if state.clock_ms is not None:
                cfg.clock.restored(state.clock_ms)

    def _fresh_from_oldest(self) -> None:
        """`fresh_until` from the oldest sighting (the first identity of `seen`)."""
        seen = self.seen
        self.fresh_until = next(iter(seen.values()))[1] + self.cfg.idle_ms if seen else None

    def _own_seen(self) -> None:
        """Copy `seen` if a snapshot holds it (copy-on-write: a snapshot hands over its dict)."""
        if self.shared:
            self.seen = dict(self.seen)
            self.shared = False

    def expire(self, now: int) -> None:
        """`Deduplicator.expire`, at no cost while no identity can be idle for the TTL yet."""
        fresh = self.fresh_until
        if fresh is not None and now < fresh:
            return
        self._own_seen()
        super().expire(now)
        self._fresh_from_oldest()

    def on_batch(self, events: list[Event]) -> tuple[list[Any], bool]:
        cfg = self.lane
        now = cfg.clock.now()
        if self.shared:
            self._own_seen()
        if len(self.seen) >= _EXPIRE_AT:  # instead of a wake-up while the key has a document
            self.expire(now)
        admit, identity = self.admit, cfg.identity
        transform = cfg.transform
        merge, mat = cfg.merge_suffix, cfg.materialize_suffix
        out: list[Any] = []
        append = out.append
        for event in events:
            if not admit(identity(event), event.event_time_ms, now):
                continue
            if transform is not None:
                event = transform(event)
                if type(event) is not Event:
                    append(event)  # the hook's dead letter
                    continue
            eid, t, key = event.event_id, event.event_time_ms, event.key
            opn = event.op
            if opn is not None:
                if opn == "delete":
                    if self.known:
                        if merge is not None:
                            prev = self.value
                            append(_change("deleted", key, prev, None, top_level_paths(prev),
                                           eid + merge, t))
                        if cfg.on_delete is not None:
                            cfg.on_delete()
                    self.known, self.value = False, None
                    append(_table("tombstone", key, None, eid + mat, t))
                    continue
                if opn == "generation":
                    continue
            new = event.value
            if self.known:
                prev = self.value
                if new == prev:
                    continue
                if merge is not None:
                    append(_change("updated", key, prev, new, differing_paths(prev, new), eid + merge, t))
            else:
                if merge is not None:
                    append(_change("created", key, None, new, top_level_paths(new), eid + merge, t))
                self.known = True
            self.value = new
            append(_table("upsert", key, new, eid + mat, t))
        if self.fresh_until is None and self.seen:  # the first identities: all sighted now
            self.fresh_until = now + cfg.dedup.idle_ms
        return out, False

    def on_notify(self) -> tuple[tuple[()], bool]:
        self.fired()
        self.expire(self.cfg.clock.now())
        return _EMPTY, not self.known and not self.seen

    def on_eof(self) -> tuple[tuple[()], bool]:
        return _EMPTY, not self.known and not self.seen

    def notify_at(self) -> datetime | None:
        """A wake-up only for a deleted key with identities left (to discard the key): a key
        with a document stays anyway, and its expired identities go at its next batch
        (`on_batch`), so it costs Bytewax no pending timer."""
        if self.known or self.at is not None:
            return None  # pending, never later than wanted (the oldest sighting only moves on)
        want = self.wake_wall_ms()
        if want is None:
            return None
        return self.request(want, self.cfg.slack_ms)

    def snapshot(self) -> OrdersLaneState:  # type: ignore[override]
        """The identities (without the expired ones: absent anyway) and the document. The
        state holds the lane's own `seen` dict, which the lane copies before it next changes
        it (a key often changes no more before it is dropped or snapshotted again)."""
        now = self.cfg.clock.now()
        self.expire(now)
        self.shared = True
        return _orders_state(self.seen, self.value, self.known, self.STATE_VERSION, now)


class SessionsLane(Alarm):
    """Dedup (optional) and sessions of one user key (a `StatefulBatchLogic` by shape)."""

    STATE_VERSION = 1
    __slots__ = ("dedup", "sessions", "slack_ms")

    def __init__(self, dedup: tuple[DedupConfig, str] | None, sessions: SessionConfig,
                 state: SessionsLaneState | None = None) -> None:
        self.due_ms, self.at = 0, None  # no wake-up pending (Alarm)
        self.dedup: Deduplicator | None = None
        self.slack_ms = sessions.slack_ms
        if dedup is not None:
            cfg, id_field = dedup
            self.dedup = Deduplicator(cfg, None if state is None else state.dedup, identity_of(id_field))
            self.slack_ms = min(self.slack_ms, cfg.slack_ms)
        self.sessions = SessionAnalyzer(sessions, None if state is None else state.sessions)

    def _empty(self) -> bool:
        return self.sessions.wm is None and (self.dedup is None or not self.dedup.seen)

    def on_batch(self, events: list[Event]) -> tuple[list[Any], bool]:
        if self.dedup is not None:
            events, _ = self.dedup.on_batch(events)
        out, gone = self.sessions.on_batch(events)
        if gone:
            self.sessions._reset()
        return out, self._empty()

    def on_notify(self) -> tuple[Any, bool]:
        self.fired()
        if self.dedup is not None:
            self.dedup.expire(self.dedup.cfg.clock.now())
        out, gone = self.sessions.on_notify()
        if gone:
            self.sessions._reset()
        return out, self._empty()

    def on_eof(self) -> tuple[Any, bool]:
        out, _ = self.sessions.on_eof()
        return out, self._empty()

    def notify_at(self) -> datetime | None:
        wants = [w for w in (self.sessions.wake_wall_ms(),
                             None if self.dedup is None else self.dedup.wake_wall_ms()) if w is not None]
        if not wants:
            return None
        return self.request(min(wants), self.slack_ms)

    def snapshot(self) -> SessionsLaneState:
        dedup = None
        if self.dedup is not None and self.dedup.seen:
            dedup = ShardDedupState(dict(self.dedup.seen), Deduplicator.STATE_VERSION,
                                    self.dedup.cfg.clock.now())
        sessions = self.sessions.snapshot() if self.sessions.wm is not None else None
        return SessionsLaneState(dedup, sessions, self.STATE_VERSION)


def orders_state_from_steps(dedup: Any, row: Any, merged: Any) -> OrdersLaneState | None:
    """The lane state of one order from the states of the steps it replaced (issue 11):
    the key-lane dedup (`LaneDedupState`), the Materializer's `MaterializedRow` and the
    merger's `MergerState` (each None when the step held nothing). None: nothing to keep."""
    seen: dict[str, tuple[int, int]] = {}
    clock_ms = None
    if dedup is not None:
        seen, clock_ms = restore_seen(dedup)
    if row is None and merged is None and not seen:
        return None
    doc = row if row is not None else merged
    return OrdersLaneState(seen, None if doc is None else doc.value, doc is not None,
                           OrdersLane.STATE_VERSION, clock_ms)


def sessions_state_from_steps(dedup: Any, sessions: SessionState | None) -> SessionsLaneState | None:
    """The lane state of one user from the key-lane dedup's and the sessions step's states."""
    shard = None
    if dedup is not None:
        seen, clock_ms = restore_seen(dedup)
        shard = ShardDedupState(seen, Deduplicator.STATE_VERSION, clock_ms) if seen else None
    if shard is None and sessions is None:
        return None
    return SessionsLaneState(shard, sessions, SessionsLane.STATE_VERSION)
