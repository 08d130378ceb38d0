"""Deduplicator: TTL boundary, out-of-order, stale repeats, wall-clock expiry, Bytewax wiring."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows import metrics
from dataflows.patterns.dedup import DedupConfig, Deduplicator, DedupState, deduplicate, identity_of
from dataflows.patterns.dedup_shards import shard_router
from tests.test_patterns_harness import ev, frozen_clock, run_pattern


def feed(logic: Deduplicator, times: list[int]) -> list[int]:
    """Event times that the logic emits."""
    return [t for t in times if logic.on_item(ev("k", t))[0]]


def test_ttl_boundary_is_half_open() -> None:
    d = Deduplicator(DedupConfig(100, clock=frozen_clock))
    # 99 is within the TTL of 0 (duplicate); 100 is exactly the TTL: a new occurrence.
    assert feed(d, [0, 99, 100, 150, 199, 200]) == [0, 100, 200]


def test_out_of_order_older_event_within_ttl_is_a_duplicate() -> None:
    d = Deduplicator(DedupConfig(100, clock=frozen_clock))
    assert feed(d, [1000, 901, 999, 1099]) == [1000]
    # Exactly ttl older is outside the window: emitted, but the anchor stays at 1000.
    assert feed(d, [900, 1050]) == [900]
    assert d.anchor_ms == 1000


def test_stale_repeat_does_not_move_the_anchor() -> None:
    d = Deduplicator(DedupConfig(10, clock=frozen_clock))
    assert feed(d, [100, 50, 50, 105, 110]) == [100, 50, 50, 110]


def test_idle_identity_expires_by_wall_clock_and_is_discarded() -> None:
    now = [1_000_000]
    evicted: list[int] = []
    cfg = DedupConfig(5_000, clock=lambda: now[0], on_evict=lambda: evicted.append(1))
    d = Deduplicator(cfg)
    assert d.on_item(ev("k", 0))[0]
    due = d.notify_at()
    assert due is not None and due >= datetime.fromtimestamp(1_005, UTC)
    assert d.notify_at() is due  # contract mode: always the time, cached (no datetime per call)
    now[0] += 4_999
    assert d.on_notify() == ((), False)  # not idle long enough: kept
    d.on_item(ev("k", 1))  # a sighting restarts the idle time
    now[0] += 4_999
    assert d.on_notify() == ((), False)
    now[0] += 5_000
    assert d.on_notify() == ((), True)
    assert evicted == [1]


def test_wake_up_is_requested_only_when_bytewax_holds_none() -> None:
    """Sparse mode (the wiring's): Bytewax keeps a scheduled time until it fires, and
    `None` from notify_at keeps it."""
    now = [10_000_000]
    d = Deduplicator(DedupConfig(60_000, clock=lambda: now[0], sparse_wakeups=True))
    d.on_item(ev("k", 0))
    first = d.notify_at()
    assert first is not None
    now[0] += 30_000
    d.on_item(ev("k", 1))
    assert d.notify_at() is None  # the pending (earlier) wake-up stays scheduled
    now[0] = int(first.timestamp() * 1000)
    assert d.on_notify() == ((), False)  # early: seen 30 s after it was scheduled
    again = d.notify_at()
    assert again is not None and again.timestamp() * 1000 >= 10_000_000 + 30_000 + 60_000


def test_snapshot_round_trip_carries_version() -> None:
    d = Deduplicator(DedupConfig(100, clock=frozen_clock))
    feed(d, [5, 50])
    snap = pickle.loads(pickle.dumps(d.snapshot()))
    assert snap == DedupState(5, 0, Deduplicator.STATE_VERSION, 0)  # + the snapshot's pipeline time
    assert snap.version == Deduplicator.STATE_VERSION == 2
    resumed = Deduplicator(DedupConfig(100, clock=frozen_clock), snap)
    assert feed(resumed, [104, 105]) == [105]


def test_identity_of_field_function_and_default() -> None:
    e = ev("key", 1, {"order_id": 7})
    assert identity_of(None)(e) == "key"
    assert identity_of("order_id")(e) == "7"
    assert identity_of(lambda x: f"x{x.event_time_ms}")(e) == "x1"
    # Missing field: falls back to the event id (only replays of itself are dropped).
    assert identity_of("missing")(e) == e.event_id
    assert identity_of("order_id")(ev("key", 1, None)) == e.event_id


def reference(events: list[tuple[str, int]], ttl: int) -> list[int]:
    """Indexes emitted: duplicate iff within ttl of the newest emitted time of the identity."""
    emitted: dict[str, list[int]] = {}
    out = []
    for i, (ident, t) in enumerate(events):
        times = emitted.get(ident)
        if times and abs(t - max(times)) < ttl:
            continue
        emitted.setdefault(ident, []).append(t)
        out.append(i)
    return out


events_st = st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 300)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(events_st, st.integers(1, 120), st.integers(0, 40))
def test_matches_reference_model_across_snapshots(events: list[tuple[str, int]], ttl: int,
                                                  cut: int) -> None:
    cfg = DedupConfig(ttl, clock=frozen_clock)
    logics: dict[str, Deduplicator] = {}
    got = []
    for i, (ident, t) in enumerate(events):
        if i == cut:  # snapshot + restore every identity mid-way: same decisions after
            logics = {k: Deduplicator(cfg, pickle.loads(pickle.dumps(v.snapshot())))
                      for k, v in logics.items()}
        logic = logics.setdefault(ident, Deduplicator(cfg))
        if logic.on_item(ev(ident, t))[0]:
            got.append(i)
    assert got == reference(events, ttl)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 1000), max_size=40), st.integers(1, 200))
def test_in_order_stream_spacing_property(times: list[int], ttl: int) -> None:
    """In event-time order: emitted times are >= ttl apart; each drop is within ttl of an emit."""
    times = sorted(times)
    d = Deduplicator(DedupConfig(ttl, clock=frozen_clock))
    emitted = feed(d, times)
    assert all(b - a >= ttl for a, b in zip(emitted, emitted[1:], strict=False))
    for t in times:
        assert any(0 <= t - e < ttl for e in emitted)


def test_dataflow_dedups_by_value_field() -> None:
    items = [ev("a", 0, {"oid": 1}, eid="e0"), ev("b", 10, {"oid": 1}, eid="e1"),
             ev("c", 20, {"oid": 2}, eid="e2"), ev("a", 1000, {"oid": 1}, eid="e3"),
             ev("d", 30, {"other": 1}, eid="e4"), ev("d", 30, {"other": 1}, eid="e4")]
    out = run_pattern(lambda s: deduplicate("dedup", s, ttl_ms=500, pipeline="t", key="oid",
                                            clock=frozen_clock), items)
    assert sorted(e.event_id for e in out) == ["e0", "e2", "e3", "e4"]


def test_dataflow_expires_idle_keys_and_counts_evictions() -> None:
    """A clock that jumps far ahead after each reading: every key expires at its first notification."""
    ticks = iter(range(0, 10**12, 10**9))

    def jumping_clock() -> int:
        return next(ticks)

    counter = metrics.STATE_EVICTIONS.labels(pipeline="t-expire", step="patterns_test.dedup", reason="ttl")
    before = counter._value.get()
    items = [ev("a", 0, eid="e0"), ev("b", 0, eid="e1"), ev("a", 1, eid="e2")]
    out = run_pattern(lambda s: deduplicate("dedup", s, ttl_ms=1000, pipeline="t-expire",
                                            clock=jumping_clock), items, batch_size=1)
    assert counter._value.get() - before >= 2
    # e2 repeats e0 within the event-time TTL, but a's state expired (wall clock) before it came.
    assert sorted(e.event_id for e in out) == ["e0", "e1", "e2"]


@settings(max_examples=100, deadline=None)
@given(events_st, st.integers(1, 120), st.integers(0, 40), st.integers(1, 3))
def test_sharded_matches_per_identity(events: list[tuple[str, int]], ttl: int, cut: int,
                                      shards: int) -> None:
    """The sharded state machine decides exactly like one Deduplicator per identity."""
    cfg = DedupConfig(ttl, clock=frozen_clock)
    route = shard_router(lambda e: e.key, shards)
    logics: dict[str, Deduplicator] = {}
    got = []
    for i, (ident, t) in enumerate(events):
        if i == cut:
            logics = {k: Deduplicator(cfg, pickle.loads(pickle.dumps(v.snapshot())), identity_of(None))
                      for k, v in logics.items()}
        shard, item = route(ev(ident, t))
        if logics.setdefault(shard, Deduplicator(cfg, None, identity_of(None))).on_item(item)[0]:
            got.append(i)
    assert got == reference(events, ttl)


def test_shard_expires_oldest_identities_first() -> None:
    now = [5_000_000]
    evicted: list[int] = []
    cfg = DedupConfig(1_000, clock=lambda: now[0], on_evict=lambda: evicted.append(1))
    s = Deduplicator(cfg, None, identity_of(None))
    s.on_item(ev("a", 0))
    now[0] += 500
    s.on_item(ev("b", 0))
    first = s.notify_at()
    assert first is not None and first.timestamp() * 1000 >= 5_001_000
    now[0] += 300
    s.on_item(ev("a", 1))  # a seen again: b is now the oldest
    now[0] = 5_001_500
    assert s.on_notify() == ((), False)  # b idle exactly the TTL: expired; a kept
    assert list(s.seen) == ["a"] and evicted == [1]
    assert s.snapshot().seen == {"a": (0, 5_000_800)}
    now[0] = 5_001_800
    assert s.on_notify() == ((), True)  # the shard is empty: discarded
    assert evicted == [1, 1]


def test_dataflow_sharded_dedup() -> None:
    items = [ev("a", 0, {"oid": 1}, eid="e0"), ev("b", 10, {"oid": 1}, eid="e1"),
             ev("c", 20, {"oid": 2}, eid="e2"), ev("a", 1000, {"oid": 1}, eid="e3")]
    out = run_pattern(lambda s: deduplicate("dedup", s, ttl_ms=500, pipeline="t", key="oid",
                                            clock=frozen_clock, shards=4), items)
    assert sorted(e.event_id for e in out) == ["e0", "e2", "e3"]
