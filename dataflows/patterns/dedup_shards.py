"""Sharded Deduplicator: many identities per Bytewax key, one wake-up per shard.

Same TTL rule and idle expiry (on pipeline time, decided on the item, the
wake-up only frees memory early) as `dedup.Deduplicator`, but the identities are
grouped into `shards` Bytewax keys (`zlib.crc32(identity) % shards`). Each
shard keeps its identities in last-sighting order, so expiry pops the oldest
ones in O(1) each, and schedules a single wake-up (for its oldest identity).

Trade-off against per-identity state (the default): far less Bytewax
per-key overhead and only `shards` pending wake-ups (Bytewax scans all pending
wake-ups on every activation), but every epoch snapshots each touched shard
*whole* (`ShardDedupState`), so snapshot bytes grow with the number of live
identities instead of the number of identities seen in the epoch.
Parallelism is capped at `shards`; keep `shards` fixed for a recovery
directory (it is part of the state layout).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from dataflows.clock import setstate_with_defaults
from dataflows.events import Event
from dataflows.patterns.alarm import Alarm
from dataflows.patterns.dedup import DedupConfig, judge

__all__ = ["ShardDedupState", "ShardDeduplicator", "shard_router"]

_EMPTY: tuple[()] = ()


@dataclass(frozen=True, slots=True)
class ShardDedupState:
    """Snapshot of one shard: `seen[identity] = (anchor_ms, last_seen_ms)`, oldest sighting first.

    `last_seen_ms` is pipeline time, `clock_ms` the pipeline time of the
    snapshot. Version 1 (before the pipeline clock) has wall times there (the
    pipeline times of a process that never resumed) and no `clock_ms`.
    """

    seen: dict[str, tuple[int, int]]
    version: int = 1
    clock_ms: int | None = None

    __setstate__ = setstate_with_defaults


class ShardDeduplicator:
    """The dedup state machine of one shard; items are `(identity, event)` pairs."""

    STATE_VERSION = 2
    __slots__ = ("cfg", "seen", "alarm")

    def __init__(self, cfg: DedupConfig, state: ShardDedupState | None = None) -> None:
        self.cfg = cfg
        self.alarm: Alarm | None = None
        self.seen: OrderedDict[str, tuple[int, int]] = OrderedDict(
            () if state is None else state.seen)
        if state is not None and state.clock_ms is not None:
            cfg.clock.restored(state.clock_ms)
        elif self.seen:  # the newest sighting is last
            cfg.clock.restored(next(reversed(self.seen.values()))[1])

    def on_item(self, item: tuple[str, Event]) -> tuple[tuple[Event, ...], bool]:
        ident, event = item
        cfg = self.cfg
        seen = self.seen
        now = cfg.clock.now()
        entry = seen.pop(ident, None)  # re-inserted last: the order is last-sighting order
        if entry is not None and now - entry[1] >= cfg.idle_ms:
            entry = None  # expired, whether or not the wake-up came first
            if cfg.on_evict is not None:
                cfg.on_evict()
        anchor = judge(None if entry is None else entry[0], event.event_time_ms, cfg.ttl_ms)
        if anchor is None:
            assert entry is not None  # a duplicate has an anchor
            seen[ident] = (entry[0], now)
            return _EMPTY, False
        seen[ident] = (anchor, now)
        return (event,), False

    def on_notify(self) -> tuple[tuple[()], bool]:
        if self.alarm is not None:
            self.alarm.fired()
        horizon = self.cfg.clock.now() - self.cfg.idle_ms
        seen = self.seen
        evict = self.cfg.on_evict
        while seen:
            ident, (_, wall) = next(iter(seen.items()))
            if wall > horizon:
                break
            seen.popitem(last=False)
            if evict is not None:
                evict()
        return _EMPTY, not seen

    def on_eof(self) -> tuple[tuple[()], bool]:
        return _EMPTY, not self.seen

    def notify_at(self) -> datetime | None:
        if not self.cfg.expire_idle or not self.seen:
            return None
        alarm = self.alarm
        if alarm is None:
            self.alarm = alarm = Alarm()
        want = next(iter(self.seen.values()))[1] + self.cfg.ttl_ms + self.cfg.clock.real_delta_ms
        if self.cfg.sparse_wakeups:
            return alarm.request(want, self.cfg.slack_ms)
        return alarm.schedule(want, self.cfg.slack_ms)

    def snapshot(self) -> ShardDedupState:
        return ShardDedupState(dict(self.seen), self.STATE_VERSION, self.cfg.clock.now())


class shard_router:  # noqa: N801 - used like a function
    """`event -> (shard key, (identity, event))` for `op.stateful` over shards."""

    __slots__ = ("identity", "shards", "names")

    def __init__(self, identity: Callable[[Event], str], shards: int) -> None:
        if shards < 1:
            raise ValueError(f"dedup shards must be >= 1, got {shards}")
        self.identity = identity
        self.shards = shards
        self.names = [str(i) for i in range(shards)]

    def __call__(self, event: Event) -> tuple[str, tuple[str, Event]]:
        ident = self.identity(event)
        return self.names[zlib.crc32(ident.encode()) % self.shards], (ident, event)
