"""Keyed lanes: the fused state machine per key emits exactly what the separate patterns emit."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.events import Event
from dataflows.patterns.dedup import (
    DedupConfig,
    Deduplicator,
    DedupState,
    LaneDedupState,
    identity_of,
)
from dataflows.patterns.lane import (
    OrdersLane,
    OrdersLaneConfig,
    SessionsLane,
    orders_state_from_steps,
)
from dataflows.patterns.materializer import MaterializedRow, Materializer
from dataflows.patterns.merger import MergerState, StatefulMerger
from dataflows.patterns.sessions import SessionAnalyzer, SessionConfig
from dataflows.pipelines.common import HookTransform
from tests.test_patterns_harness import frozen_clock

TTL = 50
orders_st = st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 200), st.sampled_from(
    [None, "insert", "update", "delete", "generation"]), st.integers(0, 3), st.integers(0, 12)),
    max_size=40)


def order(key: str, t: int, opn: str | None, v: int, eid: int) -> Event:
    return Event(key, {"eid": f"x{eid}", "v": v, "n": {"v": v % 2}}, t, f"src:{eid}:{t}", "test", opn)


def separate(events: list[Event], cut: int) -> list[Any]:
    """Dedup in the key's lane -> merge and materialize, per key, as the steps before the lanes."""
    cfg = DedupConfig(TTL, clock=frozen_clock)
    ident = identity_of("eid")
    logics: dict[str, tuple[Deduplicator, StatefulMerger, Materializer]] = {}
    out: list[Any] = []
    for i, e in enumerate(events):
        if i == cut:
            logics = {k: (Deduplicator(cfg, pickle.loads(pickle.dumps(d.snapshot())), ident),
                          StatefulMerger("m", pickle.loads(pickle.dumps(m.snapshot()))) if m.known
                          else StatefulMerger("m"),
                          Materializer("t", pickle.loads(pickle.dumps(t.snapshot()))) if t.known
                          else Materializer("t"))
                      for k, (d, m, t) in logics.items()}
        d, m, t = logics.setdefault(e.key, (Deduplicator(cfg, None, ident), StatefulMerger("m"),
                                            Materializer("t")))
        for kept in d.on_batch([e])[0]:
            out += m.on_batch([kept])[0]
            out += t.on_batch([kept])[0]
    return out


def fused(events: list[Event], cut: int, batch: int) -> list[Any]:
    cfg = OrdersLaneConfig(DedupConfig(TTL, clock=frozen_clock), "eid", merge_suffix="/m",
                           materialize_suffix="/t")
    lanes: dict[str, OrdersLane] = {}
    out: list[Any] = []
    pending: dict[str, list[Event]] = {}

    def flush() -> None:
        for key, items in pending.items():
            out.extend(lanes.setdefault(key, OrdersLane(cfg)).on_batch(items)[0])
        pending.clear()

    for i, e in enumerate(events):
        if i == cut:
            flush()
            lanes = {k: OrdersLane(cfg, pickle.loads(pickle.dumps(v.snapshot()))) for k, v in lanes.items()}
        pending.setdefault(e.key, []).append(e)
        if i % batch == batch - 1:
            flush()
    flush()
    return out


def per_key(items: list[Any]) -> dict[str, list[Any]]:
    keyed: dict[str, list[Any]] = {}
    for item in items:
        keyed.setdefault(item.event.key if hasattr(item, "watermark_ms") else item.key, []).append(item)
    return keyed


@settings(max_examples=150, deadline=None)
@given(orders_st, st.integers(0, 40), st.integers(1, 5))
def test_orders_lane_emits_what_dedup_merge_and_materialize_emit(spec: list[Any], cut: int,
                                                                 batch: int) -> None:
    events = [order(*row) for row in spec]
    assert per_key(fused(events, cut, batch)) == per_key(separate(events, cut))


def test_orders_lane_stores_the_document_once() -> None:
    cfg = OrdersLaneConfig(DedupConfig(TTL, clock=frozen_clock), "eid", merge_suffix="/m",
                           materialize_suffix="/t")
    lane = OrdersLane(cfg)
    lane.on_batch([order("a", 1, "insert", 1, 1)])
    state = lane.snapshot()
    assert state.known and state.value == {"eid": "x1", "v": 1, "n": {"v": 1}}
    assert set(state.__slots__) == {"seen", "value", "known", "version", "clock_ms"}


def test_orders_lane_wakes_up_only_a_deleted_key_with_identities() -> None:
    now = [1_000_000]
    cfg = OrdersLaneConfig(DedupConfig(1000, clock=lambda: now[0]), "eid", merge_suffix=None,
                           materialize_suffix="/t")
    lane = OrdersLane(cfg)
    lane.on_batch([order("a", 1, "insert", 1, 1)])
    assert lane.notify_at() is None  # a document: kept anyway, no pending timer in Bytewax
    (tomb,), _ = lane.on_batch([order("a", 2, "delete", 1, 2)])
    assert tomb.kind == "tombstone"
    assert lane.notify_at() is not None  # no document, identities left: a wake-up to discard it
    now[0] += 999
    assert lane.on_notify() == ((), False)
    now[0] += 1
    assert lane.on_notify() == ((), True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 700), st.booleans(), st.booleans()), max_size=40))
def test_orders_lane_snapshots_hold_exactly_the_identities_not_expired(
        steps: list[tuple[int, int, bool, bool]]) -> None:
    """Each snapshot holds the identities sighted less than the TTL of pipeline time ago, oldest
    first, and keeps them while the lane goes on (its dict is handed over, copied on change)."""
    now = [1_000_000]
    cfg = OrdersLaneConfig(DedupConfig(1000, clock=lambda: now[0]), "eid", merge_suffix=None,
                           materialize_suffix="/t")
    lane = OrdersLane(cfg)
    model: dict[str, int] = {}  # identity -> last sighting (pipeline time)
    taken: list[tuple[Any, dict[str, int]]] = []
    for eid, step, snap, restore in steps:
        now[0] += step
        lane.on_batch([order("a", 0, None, 1, eid)])
        model.pop(f"x{eid}", None)
        model[f"x{eid}"] = now[0]
        if snap or restore:
            state = lane.snapshot()
            model = {i: last for i, last in model.items() if now[0] - last < 1000}
            taken.append((state, dict(model)))
            if restore:
                lane = OrdersLane(cfg, pickle.loads(pickle.dumps(state)) if eid % 2 else state)
    for state, want in taken:
        assert {i: last for i, (_, last) in state.seen.items()} == want
        assert list(state.seen) == list(want)


def test_orders_lane_expires_after_a_snapshot_without_changing_it() -> None:
    now = [1_000_000]
    cfg = OrdersLaneConfig(DedupConfig(1000, clock=lambda: now[0]), "eid", merge_suffix=None,
                           materialize_suffix="/t")
    lane = OrdersLane(cfg)
    lane.on_batch([order("a", 1, "insert", 1, 1)])
    state = lane.snapshot()
    now[0] += 1000
    assert lane.on_notify() == ((), False) and not lane.seen  # expired; the document stays
    assert state.seen == {"x1": (1, 1_000_000)}


def test_orders_lane_runs_the_hook_after_dedup_and_keeps_its_dead_letters() -> None:
    calls: list[str] = []

    def hook(e: Event) -> Any:
        calls.append(e.event_id)
        if e.value["v"] == 2:
            raise RuntimeError("boom")
        if e.value["v"] == 3:
            return Event("other", e.value, e.event_time_ms, e.event_id, e.source)
        return {**e.value, "enriched": True}

    cfg = OrdersLaneConfig(DedupConfig(TTL, clock=frozen_clock), "eid", merge_suffix=None,
                           materialize_suffix="/t", transform=HookTransform(hook, "p.enrich", "p"))
    out, _ = OrdersLane(cfg).on_batch([order("a", 1, None, 1, 1), order("a", 1, None, 1, 1),
                                       order("a", 2, None, 2, 2), order("a", 3, None, 3, 3)])
    assert len(calls) == 3  # the repeat was dropped before the hook
    assert out[0].value["enriched"] is True
    assert [type(x).__name__ for x in out[1:]] == ["DeadLetter", "DeadLetter"]
    assert out[1].stage == "p.enrich" and "changed the key" in out[2].error_message


def test_orders_state_from_the_steps_before_the_lane() -> None:
    seen = LaneDedupState({"x1": DedupState(5, 7, 2, 9)})  # the pre-lane dedup: a DedupState per id
    state = orders_state_from_steps(seen, MaterializedRow({"v": 1}), MergerState({"v": 1}))
    assert state is not None and state.known and state.value == {"v": 1}
    assert state.seen == {"x1": (5, 7)} and state.clock_ms == 9
    gone = orders_state_from_steps(seen, None, None)
    assert gone is not None and not gone.known and gone.seen == {"x1": (5, 7)}
    assert orders_state_from_steps(None, None, None) is None


clicks_st = st.lists(st.tuples(st.sampled_from("uv"), st.integers(0, 400), st.integers(0, 8)), max_size=40)


@settings(max_examples=100, deadline=None)
@given(clicks_st, st.integers(0, 40))
def test_sessions_lane_emits_what_dedup_then_sessions_emit(spec: list[Any], cut: int) -> None:
    events = [Event(k, {"eid": f"c{i}"}, t, f"s:{n}", "test") for n, (k, t, i) in enumerate(spec)]
    dcfg = DedupConfig(TTL, clock=frozen_clock)
    scfg = SessionConfig(30, 20, clock=frozen_clock)
    ident = identity_of("eid")
    lanes: dict[str, SessionsLane] = {}
    parts: dict[str, tuple[Deduplicator, SessionAnalyzer]] = {}
    got: list[Any] = []
    want: list[Any] = []
    for n, e in enumerate(events):
        if n == cut:
            lanes = {k: SessionsLane((dcfg, "eid"), scfg, pickle.loads(pickle.dumps(v.snapshot())))
                     for k, v in lanes.items()}
            parts = {k: (Deduplicator(dcfg, pickle.loads(pickle.dumps(d.snapshot())), ident),
                         SessionAnalyzer(scfg, pickle.loads(pickle.dumps(a.snapshot()))) if a.wm is not None
                         else SessionAnalyzer(scfg)) for k, (d, a) in parts.items()}
        got += lanes.setdefault(e.key, SessionsLane((dcfg, "eid"), scfg)).on_batch([e])[0]
        d, a = parts.setdefault(e.key, (Deduplicator(dcfg, None, ident), SessionAnalyzer(scfg)))
        for kept in d.on_batch([e])[0]:
            items, gone = a.on_batch([kept])
            want += items
            if gone:
                parts[e.key] = (d, SessionAnalyzer(scfg))
    for lane in lanes.values():
        got += lane.on_eof()[0]
    for _, a in parts.values():
        want += a.on_eof()[0]
    assert per_key(got) == per_key(want)


def test_orders_lane_through_bytewax_equals_the_separate_operators_on_two_workers() -> None:
    import bytewax.operators as op

    from dataflows.flow import dedup_by_key, materialize, merge_changes, orders_lane
    from tests.test_patterns_harness import run_pattern

    events = [order(k, t, opn, v, eid) for k, t, opn, v, eid in [
        ("a", 1, "insert", 1, 1), ("b", 2, None, 1, 2), ("a", 3, None, 2, 3), ("a", 3, None, 2, 3),
        ("b", 4, "delete", 0, 4), ("a", 5, None, 2, 5), ("b", 6, None, 3, 6), ("a", 7, "delete", 0, 7)]]

    def lane(s: Any) -> Any:
        out = orders_lane("lane", s, pipeline="t", ttl_ms=10**9, id_field="eid", with_changes=True,
                          merge_step="p.merge", materialize_step="p.materialize")
        return op.merge("all", out.table, out.changes)

    def steps(s: Any) -> Any:
        unique = dedup_by_key("dedup", s, ttl_ms=10**9, pipeline="t", identity_field="eid")
        merged = merge_changes("merge", unique, pipeline="t")
        return op.merge("all", materialize("materialize", unique, pipeline="t"), merged)

    def ids(items: list[Any]) -> dict[str, list[Any]]:
        return per_key(sorted(items, key=lambda x: (x.event_time_ms, type(x).__name__)))

    got = run_pattern(lane, events, workers=2)
    want = run_pattern(steps, events, workers=2)
    # The separate operators name derived ids by their own scoped step ids.
    rename = {"/patterns_test.merge": "/p.merge", "/patterns_test.materialize": "/p.materialize"}

    def renamed(x: Any) -> Any:
        parent, _, step = x.event_id.rpartition("/")
        return type(x)(*[parent + rename["/" + step] if f == "event_id" else getattr(x, f)
                         for f in x.__slots__])

    assert ids(got) == ids([renamed(x) for x in want])
    assert len(got) == len(want) == 14  # 7 kept events (1 repeat): 7 table changes + 7 Changes
