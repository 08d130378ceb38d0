"""Deduplicator: drop repeats of an event identity within a TTL of event time.

Identity: `key` (a field name of `Event.value`, a function of the Event, or by
default `Event.key`). Event time only decides what is a duplicate, so a replay
after recovery decides the same way.

TTL rule, with `anchor` = event time of the newest occurrence emitted for the
identity and `d = event_time_ms - anchor`:

- `-ttl < d < ttl`: duplicate, dropped (an out-of-order older event within
  the TTL is a duplicate too);
- `d >= ttl`: a repeat after the TTL; emitted, and it becomes the anchor;
- `d <= -ttl`: a stale occurrence older than the TTL window; emitted, the
  anchor stays (state tracks only the newest window).

State per identity (`DedupState`): the anchor and the *pipeline time*
(`dataflows/clock.py`: wall time that does not advance while the job is
down) the identity was last seen, and the pipeline time of the snapshot
(version 2; version 1 loads without). An identity idle for `ttl` of pipeline time
is expired: its anchor no longer counts, so a repeat arriving after that is
emitted again. The decision is taken on the item itself (`P - last_seen >=
ttl` at its arrival), so it does not depend on when Bytewax's wake-up fires;
the wake-up (`notify_at`, at most `slack_for(ttl)` late) only discards the
expired state early (`state_evictions`, reason `ttl`). A restart that took
longer than the TTL expires nothing: pipeline time continues from the
checkpoint (replay-stable; the argument is in `dataflows/clock.py`).
In the wiring, `notify_at` returns a time only when Bytewax holds no earlier
wake-up for the identity (sparse mode, see `alarm.py`); a `Deduplicator`
built with a default `DedupConfig` always returns its next wake-up time, so
it can be composed in other logics.

`shards=N` keeps the same rule with N Bytewax keys holding many identities
each (`dedup_shards.py`): far fewer pending wake-ups and per-key overhead,
but every epoch snapshots whole shards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from dataflows import metrics
from dataflows.clock import PipelineClock, Wall, as_pipeline_clock, setstate_with_defaults
from dataflows.events import Event
from dataflows.patterns.alarm import Alarm, slack_for

__all__ = ["DedupConfig", "DedupState", "Deduplicator", "deduplicate", "identity_of", "judge"]

_EMPTY: tuple[()] = ()
_NEVER = 1 << 62  # idle time that never expires (expire_idle=False)


@dataclass(frozen=True, slots=True)
class DedupState:
    """Snapshot of one identity: anchor event time, last sighting and snapshot time (pipeline time).

    Version 1 (before the pipeline clock) has no `clock_ms` and wall times in
    `last_seen_wall_ms` (the pipeline times of a process that never resumed):
    it loads with `clock_ms=None` and the field keeps its first name.
    """

    anchor_ms: int
    last_seen_wall_ms: int
    version: int = 1
    clock_ms: int | None = None

    __setstate__ = setstate_with_defaults


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
    """Settings shared by every identity of one dedup step."""

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


class Deduplicator:
    """The dedup state machine of one identity (a Bytewax `StatefulLogic` by shape).

    `on_item(event)` returns `((event,), False)` for an occurrence to emit and
    `((), False)` for a duplicate (an anchor idle for the TTL of pipeline time
    counts as absent); `on_notify()` discards an identity idle for the TTL.
    """

    STATE_VERSION = 2
    __slots__ = ("cfg", "anchor_ms", "last_ms", "alarm")

    def __init__(self, cfg: DedupConfig, state: DedupState | None = None) -> None:
        self.cfg = cfg
        self.alarm: Alarm | None = None
        if state is None:
            self.anchor_ms: int | None = None
            self.last_ms = 0
        else:
            self.anchor_ms = state.anchor_ms
            self.last_ms = state.last_seen_wall_ms
            cfg.clock.restored(self.last_ms if state.clock_ms is None else state.clock_ms)

    def on_item(self, event: Event) -> tuple[tuple[Event, ...], bool]:
        cfg = self.cfg
        now = cfg.clock.now()
        anchor = self.anchor_ms
        if anchor is not None and now - self.last_ms >= cfg.idle_ms:
            anchor = None  # expired, whether or not the wake-up came first
            if cfg.on_evict is not None:
                cfg.on_evict()
        self.last_ms = now
        anchor = judge(anchor, event.event_time_ms, cfg.ttl_ms)
        if anchor is None:
            return _EMPTY, False
        self.anchor_ms = anchor
        return (event,), False

    def on_notify(self) -> tuple[tuple[()], bool]:
        if self.alarm is not None:
            self.alarm.fired()
        if self.cfg.clock.now() - self.last_ms >= self.cfg.idle_ms:
            if self.cfg.on_evict is not None:
                self.cfg.on_evict()
            return _EMPTY, True
        return _EMPTY, False

    def on_eof(self) -> tuple[tuple[()], bool]:
        return _EMPTY, False

    def notify_at(self) -> datetime | None:
        if not self.cfg.expire_idle:
            return None
        alarm = self.alarm
        if alarm is None:
            self.alarm = alarm = Alarm()
        want = self.last_ms + self.cfg.ttl_ms + self.cfg.clock.real_delta_ms
        if self.cfg.sparse_wakeups:
            return alarm.request(want, self.cfg.slack_ms)
        return alarm.schedule(want, self.cfg.slack_ms)

    def snapshot(self) -> DedupState:
        assert self.anchor_ms is not None
        return DedupState(self.anchor_ms, self.last_ms, self.STATE_VERSION, self.cfg.clock.now())


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
        if callable(key):
            return str(key(event))
        try:
            return str(event.value[key])
        except (KeyError, TypeError, IndexError):
            return event.event_id



@operator
def deduplicate(step_id: str, up: Stream[Event], *, ttl_ms: int, pipeline: str,
                key: str | Callable[[Event], str] | None = None,
                clock: PipelineClock | Wall | None = None, expire_idle: bool = True,
                shards: int | None = None) -> Stream[Event]:
    """Emit the first occurrence of each identity within `ttl_ms` of event time.

    Emits: the input Events that are not duplicates, unchanged.
    State per identity: `DedupState` (anchor event time, last sighting in
    pipeline time); discarded after `ttl_ms` of pipeline-time idleness.
    `clock`: the step's `PipelineClock` (share one per flow), or a wall
    function for tests (ms since the epoch); default a new system one.
    `expire_idle=False`
    schedules no wake-ups (faster: Bytewax scans every pending wake-up on each
    activation) but keeps every identity forever: only for a bounded identity space.
    `shards=N` groups identities into N Bytewax keys (`dedup_shards.py`: much
    faster at many identities, but each epoch snapshots whole shards).
    """
    evict = metrics.STATE_EVICTIONS.labels(pipeline=pipeline, step=step_id, reason="ttl").inc
    cfg = DedupConfig(ttl_ms, clock=clock, on_evict=evict, expire_idle=expire_idle,
                      sparse_wakeups=True)
    if shards is not None:
        from dataflows.patterns.dedup_shards import ShardDeduplicator, ShardDedupState, shard_router

        def build_shard(state: ShardDedupState | None) -> Any:
            return ShardDeduplicator(cfg, state)

        routed = op.map("shard", up, shard_router(identity_of(key), shards))
        return op.key_rm("unkey", op.stateful("dedup", routed, build_shard))
    keyed = op.key_on("identity", up, identity_of(key))

    def build(state: DedupState | None) -> Any:
        return Deduplicator(cfg, state)

    unique = op.stateful("dedup", keyed, build)
    return op.key_rm("unkey", unique)
