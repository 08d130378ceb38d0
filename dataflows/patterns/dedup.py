"""Deduplicator: drop repeats of an event identity within a TTL of event time.

The one dedup state machine of StreamForge (pure: no Bytewax here; the
operators are in `dataflows/flow/`). One `Deduplicator` holds the identities
of one Bytewax key: a single identity (the key itself, `deduplicate`'s
default), the identities of a shard (`deduplicate(shards=N)`), or the event
ids of one order inside a pipeline's keyed lane (`dataflows/patterns/lane.py`).

Identity: `identity_of(key)`: a field of `Event.value`, a function of the
Event, or `Event.key`. Event time only decides what is a duplicate, so a
replay after recovery decides the same way.

TTL rule, with `anchor` = event time of the newest occurrence emitted for the
identity and `d = event_time_ms - anchor`:

- `-ttl < d < ttl`: duplicate, dropped (an out-of-order older event within
  the TTL is a duplicate too);
- `d >= ttl`: a repeat after the TTL; emitted, and it becomes the anchor;
- `d <= -ttl`: a stale occurrence older than the TTL window; emitted, the
  anchor stays (state tracks only the newest window).

Idle expiry: each identity keeps the *pipeline time* (`dataflows/clock.py`:
wall time that does not advance while the job is down) it was last seen; one
idle for `ttl` of pipeline time is expired: its anchor no longer counts. The
decision is taken on the item itself (`P - last_seen >= ttl` at its arrival),
so it does not depend on when Bytewax's wake-up fires; the one wake-up per
Bytewax key (`notify_at`, for the identity seen longest ago, at most
`slack_for(ttl)` late) only discards expired state early (`state_evictions`,
reason `ttl`). A restart that took longer than the TTL expires nothing:
pipeline time continues from the checkpoint (replay-stable).

State (what `snapshot` returns; every older form still loads):

- one identity: `DedupState(anchor_ms, last_seen_wall_ms, version, clock_ms)`;
- several: `ShardDedupState(seen={identity: (anchor_ms, last_seen_ms)}, version,
  clock_ms)`, oldest sighting first;
- `LaneDedupState` (the keyed lane dedup before issue 11: a `DedupState` per
  identity) loads as a `ShardDedupState`.

    >>> from dataflows.events import Event
    >>> d = Deduplicator(DedupConfig(1000, clock=lambda: 0))
    >>> [len(d.on_batch([Event("k", {}, t, f"e{t}", "doc")])[0]) for t in (0, 500, 1000)]
    [1, 0, 1]
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dataflows.clock import PipelineClock, Wall, as_pipeline_clock, setstate_with_defaults
from dataflows.events import Event
from dataflows.patterns.alarm import Alarm, slack_for
from dataflows.records import frozen_factory

__all__ = [
    "DedupConfig",
    "DedupState",
    "Deduplicator",
    "LaneDedupState",
    "ShardDedupState",
    "identity_of",
    "judge",
    "restore_seen",
    "shard_of",
    "shard_router",
]

_EMPTY: tuple[()] = ()
_NEVER = 1 << 62  # idle time that never expires (expire_idle=False)
_ONE = ""  # the identity of a single-identity Deduplicator
_MISSING = object()


@dataclass(frozen=True, slots=True)
class DedupState:
    """Snapshot of a single-identity Deduplicator: anchor event time, last sighting and snapshot
    time (pipeline time).

    Version 1 (before the pipeline clock) has no `clock_ms` and wall times in
    `last_seen_wall_ms` (the pipeline times of a process that never resumed):
    it loads with `clock_ms=None` and the field keeps its first name.
    """

    anchor_ms: int
    last_seen_wall_ms: int
    version: int = 1
    clock_ms: int | None = None

    __setstate__ = setstate_with_defaults


@dataclass(frozen=True, slots=True)
class ShardDedupState:
    """Snapshot of a Deduplicator of several identities: `seen[identity] = (anchor_ms,
    last_seen_ms)`, oldest sighting first; `clock_ms` the pipeline time of the snapshot.

    Version 1 (before the pipeline clock) has wall times there and no `clock_ms`.
    """

    seen: dict[str, tuple[int, int]]
    version: int = 1
    clock_ms: int | None = None

    __setstate__ = setstate_with_defaults


@dataclass(frozen=True)
class LaneDedupState:
    """Snapshot of one key of the keyed lane dedup before issue 11: a DedupState per identity
    (loads only; also importable as `dataflows.pipelines.common.LaneDedupState`)."""

    seen: dict[str, Any]
    version: int = 1


def judge(anchor_ms: int | None, t: int, ttl_ms: int) -> int | None:
    """The TTL rule: None for a duplicate, else the anchor after emitting an event at `t`."""
    if anchor_ms is None:
        return t
    d = t - anchor_ms
    if d >= ttl_ms:
        return t
    if d <= -ttl_ms:
        return anchor_ms
    return None


class DedupConfig:
    """Settings shared by every key of one dedup step."""

    __slots__ = ("ttl_ms", "idle_ms", "slack_ms", "clock", "on_evict", "expire_idle",
                 "sparse_wakeups")

    def __init__(self, ttl_ms: int, *, clock: PipelineClock | Wall | None = None,
                 on_evict: Callable[[], None] | None = None, expire_idle: bool = True,
                 sparse_wakeups: bool = False) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"dedup ttl_ms must be > 0, got {ttl_ms}")
        self.ttl_ms = ttl_ms
        # Pipeline time after which an unseen identity's anchor no longer counts.
        self.idle_ms = ttl_ms if expire_idle else _NEVER
        self.slack_ms = slack_for(ttl_ms)
        self.clock = as_pipeline_clock(clock)
        self.on_evict = on_evict
        self.expire_idle = expire_idle
        # True only when the logic is handed to Bytewax directly (see alarm.py).
        self.sparse_wakeups = sparse_wakeups


def restore_seen(state: Any) -> tuple[dict[str, tuple[int, int]], int | None]:
    """(seen, snapshot pipeline time) of any stored form; the newest sighting is last."""
    if isinstance(state, DedupState):
        return ({_ONE: (state.anchor_ms, state.last_seen_wall_ms)},
                state.last_seen_wall_ms if state.clock_ms is None else state.clock_ms)
    if isinstance(state, LaneDedupState):
        pairs = sorted(((s.last_seen_wall_ms, i, s.anchor_ms) for i, s in state.seen.items()))
        clocks = [s.clock_ms if s.clock_ms is not None else s.last_seen_wall_ms
                  for s in state.seen.values()]
        return {i: (a, last) for last, i, a in pairs}, max(clocks, default=None)
    seen = dict(state.seen)
    if state.clock_ms is not None:
        return seen, state.clock_ms
    return seen, (next(reversed(seen.values()))[1] if seen else None)


class Deduplicator(Alarm):
    """The dedup state machine of one Bytewax key (a `StatefulBatchLogic` by shape).

    `identity`: `Event -> str` for a key holding several identities (a shard,
    an order's event ids); None: the key is the identity. `on_batch(events)`
    returns `(the events to emit, in order, False)`; `on_item(event)` is one
    event of it. `on_notify()` discards identities idle for the TTL (and the
    key's state with the last one).
    """

    STATE_VERSION = 2
    __slots__ = ("cfg", "identity", "seen")

    def __new__(cls, cfg: DedupConfig, state: Any = None,
                identity: Callable[[Event], str] | None = None) -> Deduplicator:
        if cls is Deduplicator and identity is None and (state is None or type(state) is DedupState):
            cls = _KeyDeduplicator  # the key is the identity: two ints instead of a dict
        return object.__new__(cls)

    def __init__(self, cfg: DedupConfig, state: Any = None,
                 identity: Callable[[Event], str] | None = None) -> None:
        self.cfg = cfg
        self.identity = identity
        self.due_ms, self.at = 0, None  # no wake-up pending (Alarm)
        # identity -> (anchor_ms, last_seen pipeline ms), in last-sighting order
        self.seen: dict[str, tuple[int, int]] = {}
        if state is not None:
            self.seen, clock_ms = restore_seen(state)
            if clock_ms is not None:
                cfg.clock.restored(clock_ms)

    @property
    def anchor_ms(self) -> int | None:
        """The anchor of a single-identity Deduplicator (None: nothing seen)."""
        entry = self.seen.get(_ONE)
        return None if entry is None else entry[0]

    def admit(self, ident: str, t: int, now: int) -> bool:
        """The TTL rule for identity `ident` at event time `t`, pipeline time `now`: emit?"""
        seen = self.seen
        entry = seen.pop(ident, None)  # re-inserted last: the order is last-sighting order
        cfg = self.cfg
        if entry is None:
            seen[ident] = (t, now)
            return True
        anchor, last = entry
        if now - last >= cfg.idle_ms:  # expired, whether or not the wake-up came first
            if cfg.on_evict is not None:
                cfg.on_evict()
            seen[ident] = (t, now)
            return True
        d = t - anchor
        if d >= cfg.ttl_ms:
            seen[ident] = (t, now)
            return True
        seen[ident] = (anchor, now)
        return d <= -cfg.ttl_ms

    def on_batch(self, events: list[Event]) -> tuple[list[Event], bool]:
        now = self.cfg.clock.now()
        admit = self.admit
        identity = self.identity
        if identity is None:
            return [e for e in events if admit(_ONE, e.event_time_ms, now)], False
        return [e for e in events if admit(identity(e), e.event_time_ms, now)], False

    def on_item(self, event: Event) -> tuple[tuple[Event, ...], bool]:
        ident = _ONE if self.identity is None else self.identity(event)
        if self.admit(ident, event.event_time_ms, self.cfg.clock.now()):
            return (event,), False
        return _EMPTY, False

    def expire(self, now: int) -> None:
        """Forget the identities idle for the TTL at pipeline time `now` (oldest first)."""
        seen = self.seen
        horizon = now - self.cfg.idle_ms
        evict = self.cfg.on_evict
        while seen:
            ident, (_, last) = next(iter(seen.items()))
            if last > horizon:
                return
            del seen[ident]
            if evict is not None:
                evict()

    def on_notify(self) -> tuple[tuple[()], bool]:
        self.fired()
        self.expire(self.cfg.clock.now())
        return _EMPTY, not self.seen

    def on_eof(self) -> tuple[tuple[()], bool]:
        return _EMPTY, not self.seen

    def wake_wall_ms(self) -> int | None:
        """The real wall time (ms) the oldest identity expires at, or None (no expiry)."""
        cfg = self.cfg
        if not cfg.expire_idle or not self.seen:
            return None
        return next(iter(self.seen.values()))[1] + cfg.ttl_ms + cfg.clock.real_delta_ms

    def notify_at(self) -> datetime | None:
        sparse = self.cfg.sparse_wakeups
        if sparse and self.at is not None:
            return None  # pending, and never later than wanted: the oldest sighting only moves on
        want = self.wake_wall_ms()
        if want is None:
            return None
        if sparse:
            return self.request(want, self.cfg.slack_ms)
        return self.schedule(want, self.cfg.slack_ms)

    def snapshot(self) -> DedupState | ShardDedupState:
        now = self.cfg.clock.now()
        if self.identity is None:
            anchor, last = self.seen[_ONE]
            return _dedup_state(anchor, last, self.STATE_VERSION, now)
        return ShardDedupState(dict(self.seen), self.STATE_VERSION, now)


_dedup_state = frozen_factory(DedupState)


class _KeyDeduplicator(Deduplicator):
    """A Deduplicator whose Bytewax key is the identity (`Deduplicator(cfg)` builds one).

    Same rule (`judge`) and state (`DedupState`); the anchor and the last
    sighting are two slots instead of a one-entry dict (one per key at 100k
    keys: less Python per event and fewer objects for the garbage collector).
    """

    __slots__ = ("anchor", "last")

    def __init__(self, cfg: DedupConfig, state: DedupState | None = None,
                 identity: None = None) -> None:
        self.cfg = cfg
        self.identity = None
        self.due_ms, self.at = 0, None
        self.anchor: int | None = None
        self.last = 0
        if state is not None:
            self.anchor, self.last = state.anchor_ms, state.last_seen_wall_ms
            cfg.clock.restored(state.last_seen_wall_ms if state.clock_ms is None else state.clock_ms)

    @property
    def seen(self) -> dict[str, tuple[int, int]]:  # type: ignore[override]
        """The base class's view (`{"": (anchor_ms, last_seen_ms)}` or empty); not the hot path."""
        return {} if self.anchor is None else {_ONE: (self.anchor, self.last)}

    @property
    def anchor_ms(self) -> int | None:
        return self.anchor

    def on_batch(self, events: list[Event]) -> tuple[list[Event], bool]:
        cfg = self.cfg
        now = cfg.clock.now()
        anchor = self.anchor
        if anchor is not None and now - self.last >= cfg.idle_ms:  # expired (see admit)
            if cfg.on_evict is not None:
                cfg.on_evict()
            anchor = None
        ttl = cfg.ttl_ms
        out = []
        for e in events:
            new = judge(anchor, e.event_time_ms, ttl)
            if new is not None:
                anchor = new
                out.append(e)
        self.anchor, self.last = anchor, now
        return out, False

    def on_item(self, event: Event) -> tuple[tuple[Event, ...], bool]:
        return tuple(self.on_batch([event])[0]), False

    def admit(self, ident: str, t: int, now: int) -> bool:
        raise TypeError("a Deduplicator without identity= admits only its own key's events")

    def expire(self, now: int) -> None:
        if self.anchor is not None and now - self.last >= self.cfg.idle_ms:
            self.anchor = None
            if self.cfg.on_evict is not None:
                self.cfg.on_evict()

    def on_notify(self) -> tuple[tuple[()], bool]:
        self.fired()
        self.expire(self.cfg.clock.now())
        return _EMPTY, self.anchor is None

    def on_eof(self) -> tuple[tuple[()], bool]:
        return _EMPTY, self.anchor is None

    def wake_wall_ms(self) -> int | None:
        cfg = self.cfg
        if not cfg.expire_idle or self.anchor is None:
            return None
        return self.last + cfg.ttl_ms + cfg.clock.real_delta_ms

    def snapshot(self) -> DedupState:
        anchor = self.anchor
        assert anchor is not None, "an empty key is discarded, never snapshotted"
        return _dedup_state(anchor, self.last, self.STATE_VERSION, self.cfg.clock.now())


class identity_of:  # noqa: N801 - used like a function
    """The dedup identity of an Event: `key` field of the value, a function, or `Event.key`.

    A value without the field (or not a mapping) falls back to its
    `event_id`: such events are never dropped as repeats of other events, only
    as replays of themselves.
    """

    __slots__ = ("key",)

    def __init__(self, key: str | Callable[[Event], str] | None) -> None:
        self.key = key

    def __call__(self, event: Event) -> str:
        key = self.key
        if key is None:
            return event.key
        value = event.value
        if type(value) is dict and type(key) is str:  # the hot path: no exception for a missing field
            found = value.get(key, _MISSING)
            if found is _MISSING:
                return event.event_id
            return found if type(found) is str else str(found)
        if callable(key):
            return str(key(event))
        try:
            return str(value[key])
        except (KeyError, TypeError, IndexError):
            return event.event_id


def shard_of(ident: str, shards: int) -> int:
    """The stable shard of an identity or key (crc32, the same in every process)."""
    return zlib.crc32(ident.encode()) % shards


class shard_router:  # noqa: N801 - used like a function
    """`event -> (shard key, event)` for a Deduplicator per shard (`deduplicate(shards=N)`)."""

    __slots__ = ("identity", "shards", "names")

    def __init__(self, identity: Callable[[Event], str], shards: int) -> None:
        if shards < 1:
            raise ValueError(f"dedup shards must be >= 1, got {shards}")
        self.identity = identity
        self.shards = shards
        self.names = [str(i) for i in range(shards)]

    def __call__(self, event: Event) -> tuple[str, Event]:
        return self.names[shard_of(self.identity(event), self.shards)], event


def __getattr__(name: str) -> Any:
    """`deduplicate`, the Bytewax operator, lives in `dataflows.flow` (imported on use)."""
    if name == "deduplicate":
        from dataflows.flow import deduplicate

        return deduplicate
    raise AttributeError(name)
