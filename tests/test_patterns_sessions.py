"""SessionAnalyzer: gap boundary, close, lateness, revisions, bridging, idle close, EOF flush."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows import metrics
from dataflows.events import Event
from dataflows.patterns.session_shard import SessionShard
from dataflows.patterns.sessions import (
    LateEvent,
    Session,
    SessionAnalyzer,
    SessionConfig,
    SessionRetraction,
    analyze_sessions,
)
from tests.test_patterns_harness import ev, run_pattern


def analyzer(gap: int = 10, late: int = 0, **kw: Any) -> SessionAnalyzer:
    kw.setdefault("clock", None)
    return SessionAnalyzer(SessionConfig(gap, late, **kw))


def feed(a: SessionAnalyzer, *times: int, key: str = "k") -> list[Any]:
    out: list[Any] = []
    for t in times:
        items, _ = a.on_item(ev(key, t))
        out.extend(items)
    return out


def spans(items: list[Any]) -> list[tuple[int, int, int, int, str]]:
    return [(s.start_ms, s.end_ms, s.count, s.revision, s.session_id) for s in items
            if isinstance(s, Session)]


def test_session_closes_when_watermark_passes_end_plus_gap() -> None:
    a = analyzer(gap=10)
    assert feed(a, 0, 5, 9, 18) == []  # 18 - 9 < 10: same session
    # 28 - 18 == gap: a new session, and the watermark 28 >= 18 + 10 closes the first.
    assert spans(feed(a, 28)) == [(0, 18, 4, 0, "k:0")]
    assert spans(a.on_eof()[0]) == [(28, 28, 1, 0, "k:28")]  # EOF flushes open sessions


def test_out_of_order_within_lateness_updates_a_closed_session() -> None:
    a = analyzer(gap=10, late=50)
    feed(a, 100, 105)
    assert spans(feed(a, 130)) == [(100, 105, 2, 0, "k:100")]
    # 95 is older than the closed session's start but within lateness: start moves, id stays.
    assert spans(feed(a, 95)) == [(95, 105, 3, 1, "k:100")]
    assert spans(feed(a, 104)) == [(95, 105, 4, 2, "k:100")]


def test_bridging_event_merges_two_closed_sessions() -> None:
    a = analyzer(gap=10, late=100)
    first = spans(feed(a, 0, 15, 40))
    assert first == [(0, 0, 1, 0, "k:0"), (15, 15, 1, 0, "k:15")]
    # 8 is within gap of both (0 + 10 > 8 and 15 - 10 < 8): one session, earliest id, revision + 1;
    # the absorbed, emitted k:15 is retracted (first, so a consumer never holds both).
    out = feed(a, 8)
    assert spans(out) == [(0, 15, 3, 1, "k:0")]
    assert out[0] == SessionRetraction("k", "k:15", 1, "k:0") and len(out) == 2
    assert [(s.start, s.end) for s in a.spans] == [(0, 15), (40, 40)]


def test_event_beyond_lateness_goes_to_late_output() -> None:
    late_calls: list[int] = []
    a = analyzer(gap=10, late=20, on_late=lambda: late_calls.append(1))
    feed(a, 100)
    e = ev("k", 79)
    assert a.on_item(e) == ((LateEvent(e, "beyond_allowed_lateness", 100),), False)
    # Exactly watermark - lateness is not late: a new session, closed at once (80 + 10 <= 100).
    assert spans(feed(a, 80)) == [(80, 80, 1, 0, "k:80")]
    assert late_calls == [1]


def test_retained_until_lateness_then_dropped() -> None:
    a = analyzer(gap=10, late=20)
    feed(a, 0, 12)
    assert [s.start for s in a.spans] == [0, 12]  # session 0 closed (12 >= 10) but retained
    feed(a, 29)
    assert [s.start for s in a.spans] == [0, 12, 29]  # 29 - 20 = 9 < 0 + 10
    feed(a, 30)
    assert [s.start for s in a.spans] == [12, 29]  # dropped once watermark - lateness >= end + gap


def test_idle_key_closes_by_pipeline_clock_and_is_discarded() -> None:
    now = [1_000_000]
    evicted: list[int] = []
    a = analyzer(gap=10_000, late=5_000, clock=lambda: now[0], on_evict=lambda: evicted.append(1))
    feed(a, 50_000, 52_000)
    assert a.notify_at() is not None  # possibly early (extending a session does not re-arm)
    now[0] += 9_999
    assert a.on_notify() == ((), False)
    due = a.notify_at()  # re-armed exactly: watermark reaches end + gap in 1 ms (+ slack)
    assert due is not None and 1_010_000 <= due.timestamp() * 1000 <= 1_010_000 + 1_000
    now[0] += 1  # watermark 52_000 + 10_000 = end + gap: closes
    out, discard = a.on_notify()
    assert spans(out) == [(50_000, 52_000, 2, 0, "k:50000")] and not discard
    now[0] += 5_000  # the drop threshold (watermark - lateness = end + gap) is reached ...
    assert a.on_notify() == ((), False)  # ... but each idle step needs a full gap of pipeline time
    now[0] += 5_000
    assert a.on_notify() == ((), True)  # dropped, key discarded
    assert evicted == [1]


def test_custom_aggregate_merges_when_bridging() -> None:
    a = analyzer(gap=10, late=100, aggregate=lambda acc, e: acc + e.value["n"],
                 initial=lambda: 0, merge=lambda x, y: x + y)
    for t, n in [(0, 1), (15, 2), (40, 4), (8, 8)]:
        a.on_item(ev("k", t, {"n": n}))
    out, _ = a.on_eof()
    assert [(s.start_ms, s.aggregate) for s in out] == [(40, 4)]
    assert a.spans[0].agg == 11
    with pytest.raises(ValueError, match="merge"):
        SessionConfig(10, 0, aggregate=lambda acc, e: acc)


def test_snapshot_round_trip_resumes_identically() -> None:
    a = analyzer(gap=10, late=30)
    feed(a, 0, 5, 20)
    state = pickle.loads(pickle.dumps(a.snapshot()))
    assert state.version == SessionAnalyzer.STATE_VERSION == 2 and state.key == "k"
    b = SessionAnalyzer(a.cfg, state)
    assert spans(feed(b, 3, 40)) == spans(feed(a, 3, 40))


def clusters(times: list[int], gap: int) -> list[tuple[int, int, int]]:
    out: list[list[int]] = []
    for t in sorted(times):
        if out and t - out[-1][1] < gap:
            out[-1][1] = t
            out[-1][2] += 1
        else:
            out.append([t, t, 1])
    return [tuple(c) for c in out]  # type: ignore[misc]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=30), st.integers(1, 30), st.integers(0, 40))
def test_matches_reference_model(times: list[int], gap: int, lateness: int) -> None:
    """Reference: late iff older than (max time so far - lateness); final sessions = clusters
    of the accepted events; revisions of an id go 0, 1, 2, ..."""
    a = analyzer(gap=gap, late=lateness)
    emitted: list[Any] = []
    accepted: list[int] = []
    late: list[int] = []
    wm: int | None = None
    for t in times:
        if wm is not None and t < wm - lateness:
            late.append(t)
        else:
            accepted.append(t)
            wm = t if wm is None else max(wm, t)
        items, discard = a.on_item(ev("k", t))
        assert not discard  # without wall-clock advance the newest session never drops
        emitted.extend(items)
    emitted.extend(a.on_eof()[0])
    assert [x.event.event_time_ms for x in emitted if isinstance(x, LateEvent)] == late
    # The output as an upsert/retract stream keyed by session id: revisions of an id go
    # 0, 1, 2, ...; a retraction comes last (nothing follows it) and deletes the id.
    last: dict[str, Session | SessionRetraction] = {}
    for s in emitted:
        if isinstance(s, (Session, SessionRetraction)):
            prev = last.get(s.session_id)
            assert not isinstance(prev, SessionRetraction)
            assert s.revision == (0 if prev is None else prev.revision + 1)
            last[s.session_id] = s
    final = [s for s in last.values() if isinstance(s, Session)]
    assert sorted((s.start_ms, s.end_ms, s.count) for s in final) == clusters(accepted, gap)
    assert sum(s.count for s in final) == len(accepted)


def test_dataflow_sessions_and_late_outputs() -> None:
    counter = metrics.LATE_EVENTS.labels(pipeline="t-sessions", step="patterns_test.sessions")
    before = counter._value.get()
    items: list[Event] = [ev("a", 0), ev("b", 0), ev("a", 5), ev("a", 30), ev("b", 100),
                          ev("a", 3), ev("a", 1)]
    out = run_pattern(lambda s: _both(s), items)
    sess = sorted((s.key, s.start_ms, s.end_ms, s.count, s.revision) for s in out
                  if isinstance(s, Session))
    assert sess == [("a", 0, 5, 2, 0), ("a", 0, 5, 3, 1), ("a", 0, 5, 4, 2), ("a", 30, 30, 1, 0),
                    ("b", 0, 0, 1, 0), ("b", 100, 100, 1, 0)]
    late = [x for x in out if isinstance(x, LateEvent)]
    assert late == []
    items2 = [ev("c", 100), ev("c", 10)]
    out2 = run_pattern(lambda s: _both(s), items2)
    assert [x.event.event_time_ms for x in out2 if isinstance(x, LateEvent)] == [10]
    assert counter._value.get() - before == 1


def _both(up: Any) -> Any:
    import bytewax.operators as op

    sessions, late = analyze_sessions("sessions", up, gap_ms=10, allowed_lateness_ms=30,
                                      pipeline="t-sessions", advance_on_idle=False)
    return op.merge("all", sessions, late)


def test_dataflow_idle_keys_close_and_are_discarded() -> None:
    """Through Bytewax (sparse wake-ups): a clock that jumps far ahead at each reading makes
    every key idle-close at its first notification; all events end up in closed sessions."""
    ticks = iter(range(0, 10**13, 10**9))
    evictions = metrics.STATE_EVICTIONS.labels(pipeline="t-idle", step="patterns_test.sessions",
                                               reason="sessions_closed")
    before = evictions._value.get()
    items = [ev("a", 0), ev("b", 0), ev("a", 5), ev("c", 7)]

    def body(up: Any) -> Any:
        sessions, _ = analyze_sessions("sessions", up, gap_ms=10, allowed_lateness_ms=0,
                                       pipeline="t-idle", clock=lambda: next(ticks))
        return sessions

    out = run_pattern(body, items, batch_size=1)
    assert sum(s.count for s in out) == len(items)
    assert {s.key for s in out} == {"a", "b", "c"}
    assert evictions._value.get() - before >= 2


def test_shard_asks_one_wake_up_for_its_earliest_key_and_drops_closed_keys() -> None:
    """A SessionShard holds many keys' analyzers and asks Bytewax for one wake-up: the earliest
    wanted by any of its keys; when it fires, only the due keys close; an empty shard is discarded."""
    now = [1_000_000]
    cfg = SessionConfig(10_000, 0, clock=lambda: now[0])
    shard = SessionShard(cfg)
    assert shard.on_batch([ev("a", 50_000)]) == ([], False)
    now[0] += 4_000
    assert shard.on_batch([ev("b", 60_000)]) == ([], False)
    at = shard.notify_at()  # a's: idle for a gap from 1_000_000 (+ slack), not b's later one
    assert at is not None and 1_010_000 <= at.timestamp() * 1000 <= 1_011_000
    now[0] = 1_010_000
    out, discard = shard.on_notify()
    assert spans(out) == [(50_000, 50_000, 1, 0, "a:50000")] and not discard
    assert set(shard.keys) == {"b"}  # a closed and (lateness 0) dropped at once; b untouched
    state = pickle.loads(pickle.dumps(shard.snapshot()))
    assert set(state.keys) == {"b"} and state.key_state("b").watermark_ms == 60_000
    shard = SessionShard(cfg, state)  # restored: b's wake-up is asked for again
    now[0] = 1_030_000
    out, discard = shard.on_notify()
    assert spans(out) == [(60_000, 60_000, 1, 0, "b:60000")]
    now[0] = 1_060_000
    while shard.keys:
        _, discard = shard.on_notify()
    assert discard and shard.notify_at() is None


def test_sharded_step_refuses_a_per_key_state_row() -> None:
    """State written with shards=None (a SessionState per user key) is never silently dropped
    into a sharded step: its builder refuses it, naming the step and the re-key migration."""
    a = analyzer(gap=10)
    feed(a, 0)
    with pytest.raises(TypeError, match="shard_per_key_rows"):
        from dataflows.flow import _refuse_per_key_state

        _refuse_per_key_state("sessions.sessions", a.snapshot())


def test_shard_snapshot_rebuilds_exactly_the_keys_touched_since_the_last_one() -> None:
    """A shard keeps each key's snapshot tuple between epochs: a key touched since (an event,
    a wake-up, the EOF flush) is snapshotted anew, an untouched one is the very same tuple."""
    now = [1_000_000]
    shard = SessionShard(SessionConfig(10, 100, clock=lambda: now[0]))
    shard.on_batch([ev("a", 0), ev("b", 0)])
    first = shard.snapshot()
    shard.on_batch([ev("a", 5)])
    second = shard.snapshot()
    assert second.keys["b"] is first.keys["b"]
    assert second.key_state("a").spans[0][:3] == (0, 5, 2) and first.key_state("a").spans[0][:3] == (0, 0, 1)
    out, _ = shard.on_eof()  # emits both keys' open sessions: their spans are clean now
    assert len(out) == 2
    third = shard.snapshot()
    assert all(not span[6] for k in ("a", "b") for span in third.key_state(k).spans)
    now[0] += 1_000
    shard.on_notify()  # idle: both close (already emitted) or drop
    fourth = shard.snapshot()
    restored = SessionShard(shard.cfg, pickle.loads(pickle.dumps(fourth)))
    assert restored.snapshot().keys == fourth.keys
