"""Replay determinism of the time-driven patterns (issue 9 item 4).

The TransactionalWriter skips replayed records by `sf-event-id`, which is
exactly-once only if a replay reproduces the failure-free output. Dedup's idle
expiry and the idle watermark advance of sessions used to run on the wall
clock, also across a restart: after a restart that took longer than the TTL
or the gap, the replay dropped state the original run still had (a
redelivery the original dropped is emitted again; a session the original
extended is closed and re-started). Now they run on the pipeline clock
(`dataflows/clock.py`), which does not advance while the job is down.

- `test_*_restart_after_downtime_*`: logic classes driven as Bytewax drives
  them (wake-up as soon as it is due, discard on `True`), restarted from
  pickled state after a downtime of twice the TTL / gap: the same output as
  without the restart. (Failed before the fix: the redelivery was emitted,
  the session closed early.)
- `test_*_wake_ups_and_downtime_change_nothing`: property tests of the
  argument in `dataflows/clock.py`: wake-ups at any time, and restarts after
  any downtime, give the output of a run without them.
- `test_flow_*`: through Bytewax with a recovery directory: abort, resume with
  the (injected) wall clock two hours later, compare every output record
  (ids and contents) with the uninterrupted run.
- `test_sessions_pipeline_*`: the sessions pipeline (dedup + sessions with
  `advance-on-idle`) resumed with `STREAMFORGE_CLOCK_SKEW_SECONDS=7200`, the
  variable the chaos harness uses to simulate a long restart.
- `test_state_from_before_the_pipeline_clock_loads`: state pickled by the
  previous code (no pipeline clock) loads and continues.
"""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Stream
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.events import Event, now_ms
from dataflows.flow import dedup_by_key
from dataflows.patterns.dedup import DedupConfig, Deduplicator, deduplicate, identity_of, shard_of
from dataflows.patterns.session_shard import SessionShard
from dataflows.patterns.sessions import LateEvent, SessionAnalyzer, SessionConfig, analyze_sessions
from tests.test_patterns_harness import by_id, run_pattern

# Far above the real time a test run takes (the uninterrupted runs through Bytewax must not
# expire or idle-close anything, on a loaded machine too), far below the simulated downtime.
TTL = 1_800_000  # 30 min
GAP, LATENESS = 600_000, 60_000  # 10 min, 1 min
HOUR = 3_600_000


def ev(key: str, t: int, eid: str) -> Event:
    return Event(key, {"id": eid, "user": key}, t, eid, "test")


class Driver:
    """Drives logic objects per key as Bytewax 0.21.1 does: build (with restored state), items,
    a wake-up once its time has come, discard on `True`; `restart` pickles every state and
    rebuilds with a new config (a new process) after a downtime of the fake wall clock."""

    def __init__(self, new_cfg: Callable[[Callable[[], int]], Any],
                 build: Callable[[Any, Any], Any], route: Callable[[Event], tuple[str, Any]],
                 start_ms: int = 1_700_000_000_000) -> None:
        self.now = [start_ms]
        self.new_cfg, self.build, self.route = new_cfg, build, route
        self.cfg = new_cfg(self.wall)
        self.logics: dict[str, Any] = {}
        self.out: list[tuple[str, Any]] = []

    def wall(self) -> int:
        return self.now[0]

    def _emit(self, key: str, items: Any) -> None:
        self.out.extend((key, item) for item in items)

    def item(self, event: Event) -> None:
        key, value = self.route(event)
        logic = self.logics.get(key)
        if logic is None:
            logic = self.logics[key] = self.build(self.cfg, None)
        items, discard = logic.on_item(value)
        self._emit(key, items)
        if discard:
            del self.logics[key]

    def notify_due(self, *, early: bool = False) -> None:
        """Fire every wake-up that is due by the fake wall clock (all of them if `early`)."""
        for key, logic in list(self.logics.items()):
            at = logic.notify_at()
            if at is None and not early:
                continue
            if early or at.timestamp() * 1000 <= self.now[0]:
                items, discard = logic.on_notify()
                self._emit(key, items)
                if discard:
                    del self.logics[key]

    def restart(self, downtime_ms: int) -> None:
        states = {k: pickle.loads(pickle.dumps(v.snapshot())) for k, v in self.logics.items()}
        self.now[0] += downtime_ms
        self.cfg = self.new_cfg(self.wall)
        self.logics = {k: self.build(self.cfg, s) for k, s in states.items()}

    def eof(self) -> list[tuple[str, Any]]:
        for key, logic in list(self.logics.items()):
            items, _ = logic.on_eof()
            self._emit(key, items)
        return self.out


def dedup_driver() -> Driver:
    return Driver(lambda wall: DedupConfig(TTL, clock=wall), Deduplicator,
                  lambda e: (e.event_id, e))


def shard_driver() -> Driver:
    """One shard holding every identity (the event ids)."""
    return Driver(lambda wall: DedupConfig(TTL, clock=wall),
                  lambda cfg, state: Deduplicator(cfg, state, _event_id), lambda e: ("0", e))


def _event_id(e: Event) -> str:
    return e.event_id


def lane_driver() -> Driver:
    ident = identity_of("id")
    return Driver(lambda wall: DedupConfig(TTL, clock=wall),
                  lambda cfg, state: Deduplicator(cfg, state, ident), lambda e: (e.key, e))


def sessions_driver() -> Driver:
    return Driver(lambda wall: SessionConfig(GAP, LATENESS, clock=wall), SessionAnalyzer,
                  lambda e: (e.key, e))


def session_shard_driver() -> Driver:
    """The keys' sessions in 2 shards (`SessionShard`: one wake-up per shard)."""
    return Driver(lambda wall: SessionConfig(GAP, LATENESS, clock=wall), SessionShard,
                  lambda e: (str(shard_of(e.key, 2)), e))


def by_event_key(out: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    """The outputs per `Event.key` (whatever Bytewax key, key or shard, emitted them)."""
    keyed: dict[str, list[Any]] = {}
    for _, item in out:
        keyed.setdefault(item.event.key if isinstance(item, LateEvent) else item.key, []).append(item)
    return keyed


DEDUP_DRIVERS = {"per_identity": dedup_driver, "sharded": shard_driver, "key_lane": lane_driver}


def emitted_ids(out: list[tuple[str, Any]]) -> list[str]:
    return [item.event_id for _, item in out]


@pytest.mark.parametrize("kind", sorted(DEDUP_DRIVERS))
def test_dedup_restart_after_downtime_drops_what_the_original_dropped(kind: str) -> None:
    """A redelivery 10 s (event time) after the original, replayed after a 2 h restart (TTL
    30 min): the failure-free run drops it, and so must the resumed one."""

    def run(downtime_ms: int | None) -> list[str]:
        d = DEDUP_DRIVERS[kind]()
        d.item(ev("u", 1_000, "x"))
        d.now[0] += 1_000
        if downtime_ms is not None:
            d.restart(downtime_ms)
        d.now[0] += 1_000
        d.notify_due()  # Bytewax fires every wake-up that is due, before the replayed item
        d.item(ev("u", 11_000, "x"))  # the redelivery
        return emitted_ids(d.eof())

    assert run(None) == ["x"]
    assert run(0) == ["x"]
    assert run(2 * HOUR) == ["x"]  # before the fix: ["x", "x"] (expired during the downtime)


def session_rows(out: list[tuple[str, Any]]) -> list[tuple[Any, ...]]:
    rows = []
    for _, s in out:
        if hasattr(s, "session_id"):
            rows.append((s.session_id, s.revision, s.start_ms, s.end_ms, s.count))
        else:
            rows.append(("late", s.event.event_id, s.watermark_ms))
    return rows


def test_sessions_restart_after_downtime_closes_like_the_original() -> None:
    """A session open at the crash, extended by the next event after a 2 h restart (gap
    10 min): the failure-free run extends it, and so must the resumed one."""

    def run(downtime_ms: int | None) -> list[tuple[Any, ...]]:
        d = sessions_driver()
        d.item(ev("u", 1_000, "a"))
        d.item(ev("u", 5_000, "b"))
        d.now[0] += 1_000
        if downtime_ms is not None:
            d.restart(downtime_ms)
        d.now[0] += 1_000
        d.notify_due()
        d.item(ev("u", 6_000, "c"))
        return session_rows(d.eof())

    reference = [("u:1000", 0, 1_000, 6_000, 3)]
    assert run(None) == reference
    assert run(0) == reference
    # Before the fix: [("u:1000", 0, 1000, 5000, 2), ("u:6000", 0, 6000, 6000, 1)].
    assert run(2 * HOUR) == reference


def test_idle_state_still_expires_after_the_ttl_or_gap_of_running_time() -> None:
    def idle_after_restart(make: Callable[[], Driver], period_ms: int) -> Driver:
        d = make()
        d.item(ev("u", 1_000, "x"))
        d.restart(2 * HOUR)
        idle_for(d, period_ms)
        return d

    def idle_for(d: Driver, period_ms: int) -> None:
        d.now[0] += period_ms + period_ms // 8  # the period (+ the wake-up's slack) while running
        d.notify_due()

    dedup = idle_after_restart(dedup_driver, TTL)
    assert dedup.logics == {}  # expired and discarded
    dedup.item(ev("u", 2_000, "x"))
    assert emitted_ids(dedup.eof()) == ["x", "x"]
    sessions = idle_after_restart(sessions_driver, GAP)
    assert session_rows(sessions.out) == [("u:1000", 0, 1_000, 1_000, 1)]  # closed
    idle_for(sessions, GAP)
    assert sessions.logics == {}  # and, one more gap later, dropped


# -- properties: wake-ups and downtime never change the output ---------------------------------

# A script: (wall ms elapsed while running, key index, event time, id index, action) where
# action 0 = only the item, 1 = fire due wake-ups before it, 2 = fire every wake-up (early
# ones too: on_notify must re-check), 3 = restart before it after a downtime.
steps = st.lists(st.tuples(st.integers(0, 3 * GAP), st.integers(0, 2), st.integers(0, 10 * GAP),
                           st.integers(0, 5), st.integers(0, 3)), max_size=25)


def play(make: Callable[[], Driver], script: list[tuple[int, int, int, int, int]],
         actions: bool, downtime_ms: int) -> list[tuple[str, Any]]:
    d = make()
    for elapsed, k, t, i, action in script:
        d.now[0] += elapsed
        if actions and action == 1:
            d.notify_due()
        elif actions and action == 2:
            d.notify_due(early=True)
        elif action == 3:
            d.restart(downtime_ms if actions else 0)
        d.item(ev(f"k{k}", t, f"e{i}"))
    return d.eof()


def per_key(out: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    keyed: dict[str, list[Any]] = {}
    for key, item in out:
        keyed.setdefault(key, []).append(item)
    return keyed


@settings(max_examples=150, deadline=None)
@given(steps, st.integers(0, 50 * HOUR))
def test_sessions_wake_ups_and_downtime_change_nothing(script: list[Any], downtime: int) -> None:
    """Same sessions (ids, revisions, contents) and late events per key, whatever the wake-ups
    did and however long each restart took, as a run restarted without downtime and without
    wake-ups: every decision is a function of the state and the item's pipeline time."""
    expected = per_key(play(sessions_driver, script, False, 0))
    assert per_key(play(sessions_driver, script, True, downtime)) == expected


@settings(max_examples=150, deadline=None)
@given(steps, st.integers(0, 50 * HOUR))
def test_sharded_sessions_equal_per_key_sessions(script: list[Any], downtime: int) -> None:
    """Keys sharing a shard and its one wake-up emit, per key and in order, exactly what a
    SessionAnalyzer per key emits (run without wake-ups or downtime), whatever the shard's
    wake-ups did and however long each restart took."""
    expected = by_event_key(play(sessions_driver, script, False, 0))
    assert by_event_key(play(session_shard_driver, script, True, downtime)) == expected


@pytest.mark.parametrize("kind", sorted(DEDUP_DRIVERS))
@settings(max_examples=60, deadline=None)
@given(script=steps, downtime=st.integers(0, 50 * HOUR))
def test_dedup_wake_ups_and_downtime_change_nothing(kind: str, script: list[Any], downtime: int) -> None:
    make = DEDUP_DRIVERS[kind]
    expected = emitted_ids(play(make, script, False, 0))
    assert emitted_ids(play(make, script, True, downtime)) == expected


# -- through Bytewax: abort, resume two hours later ---------------------------------------------

class ShiftedWall:
    """The wall clock a flow reads, shifted by `shift_ms` (set per execution)."""

    def __init__(self) -> None:
        self.shift_ms = 0

    def __call__(self) -> int:
        return now_ms() + self.shift_ms


def flow_input() -> list[Any]:
    """Key u: a, b (open session), redelivery of b 3 s later in event time after the abort
    point; key v fills the first batches of the resumed execution so that wake-ups that are
    due fire before u's items (as they do after a real long restart)."""
    items: list[Any] = [ev("u", 1_000, "a"), ev("u", 5_000, "b"), ev("v", 1_000, "f0"),
                        TestingSource.ABORT()]
    items += [ev("v", 1_000 + 10 * i, f"f{i}") for i in range(1, 30)]
    items += [ev("u", 6_000, "c"), ev("u", 8_000, "b")]
    return items


def run_resumed(body: Callable[[Stream[Event], ShiftedWall], Stream[Any]], tmp: Path,
                *, shift_first_ms: int) -> list[Any]:
    """Execution 1 reads the wall clock `shift_first_ms` off (it ran that long ago), the
    resumed execution 2 reads it right: a restart after a downtime of `-shift_first_ms`."""
    rec = tmp / "recovery"
    rec.mkdir()
    init_db_dir(rec, 1)
    out: list[Any] = []
    items = flow_input()  # one list: its ABORT remembers it was triggered
    for shift in (shift_first_ms, 0):
        wall = ShiftedWall()
        wall.shift_ms = shift
        run_pattern(lambda s, wall=wall: body(s, wall), items, recovery_dir=rec,  # type: ignore[misc]
                    batch_size=1, out=out)
    return out


def _dedup(s: Stream[Event], wall: ShiftedWall) -> Stream[Any]:
    return deduplicate("dedup", s, ttl_ms=TTL, pipeline="t-replay", key="id", clock=wall)


def _dedup_sharded(s: Stream[Event], wall: ShiftedWall) -> Stream[Any]:
    return deduplicate("dedup", s, ttl_ms=TTL, pipeline="t-replay", key="id", clock=wall, shards=2)


def _dedup_lane(s: Stream[Event], wall: ShiftedWall) -> Stream[Any]:
    from dataflows.clock import PipelineClock

    return dedup_by_key("dedup", s, ttl_ms=TTL, pipeline="t-replay", identity_field="id",
                             clock=PipelineClock(wall))


def _sessions(s: Stream[Event], wall: ShiftedWall) -> Stream[Any]:
    sessions, late = analyze_sessions("sessions", s, gap_ms=GAP, allowed_lateness_ms=LATENESS,
                                      pipeline="t-replay", clock=wall)
    return op.merge("all", sessions, late)


FLOWS = {"dedup": _dedup, "dedup_sharded": _dedup_sharded, "dedup_lane": _dedup_lane,
         "sessions": _sessions}


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_flow_resumed_two_hours_later_equals_the_uninterrupted_run(name: str, tmp_path: Path) -> None:
    body = FLOWS[name]
    wall = ShiftedWall()
    items = [i for i in flow_input() if not isinstance(i, type(TestingSource.ABORT()))]
    reference = by_id(run_pattern(lambda s: body(s, wall), items, batch_size=1))
    resumed = by_id(run_resumed(body, tmp_path, shift_first_ms=-2 * HOUR))
    assert resumed == reference  # same ids, same contents (by_id checks replays are identical)
    if name.startswith("dedup"):
        assert "Event:b" in reference and sum(1 for i in reference if i.startswith("Event:")) == 33
    else:
        assert "u:1000#0" in reference and reference["u:1000#0"].count == 4


# -- the sessions pipeline, resumed with STREAMFORGE_CLOCK_SKEW_SECONDS ----------------------------

def test_sessions_pipeline_resumed_with_clock_skew_equals_the_uninterrupted_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataflows.clock import SKEW_ENV
    from dataflows.config import load_config
    from dataflows.connectors.files import JsonlSource, read_jsonl
    from dataflows.pipelines import sessions
    from tests.test_pipelines_sessions import REPO

    clicks = [
        {"event_id": "a", "user_id": "u", "ts": 1_000, "action": "view"},
        {"event_id": "b", "user_id": "u", "ts": 5_000, "action": "view"},
        *({"event_id": f"f{i}", "user_id": "v", "ts": 1_000 + i, "action": "view"} for i in range(20)),
        {"event_id": "c", "user_id": "u", "ts": 6_000, "action": "buy", "amount": 3},
        {"event_id": "b", "user_id": "u", "ts": 5_000, "action": "view"},  # a redelivery
    ]

    def cfg(out: str) -> Any:
        return load_config(REPO / "config" / "sessions.yaml", environ={
            "STREAMFORGE__SINK__PATH": str(tmp_path / out / "sessions.jsonl"),
            "STREAMFORGE__DLQ__PATH": str(tmp_path / out / "dlq.jsonl"),
            "STREAMFORGE__PATTERNS__SESSIONS__GAP": "10m",
            "STREAMFORGE__PATTERNS__SESSIONS__ALLOWED_LATENESS": "1m",
            "STREAMFORGE__PATTERNS__SESSIONS__ADVANCE_ON_IDLE": "true",
            "STREAMFORGE__PATTERNS__DEDUP__TTL": "30m",
            "STREAMFORGE__SOURCE__PATH": str(tmp_path / "clicks.jsonl"),
        })

    data = tmp_path / "clicks.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in clicks))
    records = JsonlSource(str(data), batch_size=100).build_part("in", str(data), None).next_batch()
    assert len(records) == len(clicks)
    ref_cfg = cfg("ref")
    run_main(sessions.build_flow(ref_cfg, source=TestingSource(records, batch_size=1)))
    crash_cfg = cfg("crash")
    rec = tmp_path / "recovery"
    rec.mkdir()
    init_db_dir(rec, 1)
    items = records[:3] + [TestingSource.ABORT()] + records[3:]
    for skew in ("0", "7200"):  # the resumed process sees a restart that took two hours
        monkeypatch.setenv(SKEW_ENV, skew)
        flow = sessions.build_flow(crash_cfg, source=TestingSource(items, batch_size=1))
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(rec))

    def rows(c: Any) -> dict[str, Any]:
        return by_id([_Row(r) for r in read_jsonl(c.str("sink.path"))])

    assert rows(crash_cfg) == rows(ref_cfg)
    assert rows(ref_cfg)["u:1000#0"].count == 3  # a, b, c; the redelivery of b dropped


class _Row(dict):  # type: ignore[type-arg]
    """A sink line with the attributes `by_id` reads."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


# -- state pickled before the pipeline clock ----------------------------------------------------

# Written by the code before this change (wall clock 1_700_000_000_000): an identity x
# (anchor 1000); a shard with x, y; a lane with x, y; a session [1000, 5000] of u, count 2.
OLD_STATES = {
    "dedup": "gASVQAAAAAAAAACMGGRhdGFmbG93cy5wYXR0ZXJucy5kZWR1cJSMCkRlZHVwU3RhdGWUk5QpgZRdlChN6AOKBgBo5c+LAUsBZWIu",
    "shard": "gASVZwAAAAAAAACMH2RhdGFmbG93cy5wYXR0ZXJucy5kZWR1cF9zaGFyZHOUjA9TaGFyZERlZHVwU3RhdGWUk5QpgZRdlCh9lCiMAXiU"
             "TegDigYAaOXPiwGGlIwBeZRN3AWKBgBo5c+LAYaUdUsBZWIu",
    "lane": "gASVrgAAAAAAAACMGmRhdGFmbG93cy5waXBlbGluZXMuY29tbW9ulIwOTGFuZURlZHVwU3RhdGWUk5QpgZR9lCiMBHNlZW6UfZQojAF4"
            "lIwYZGF0YWZsb3dzLnBhdHRlcm5zLmRlZHVwlIwKRGVkdXBTdGF0ZZSTlCmBlF2UKE3oA4oGAGjlz4sBSwFlYowBeZRoCimBlF2UKE2w"
            "BIoGAGjlz4sBSwFlYnWMB3ZlcnNpb26USwF1Yi4=",
    "sessions": "gASVXQAAAAAAAACMG2RhdGFmbG93cy5wYXR0ZXJucy5zZXNzaW9uc5SMDFNlc3Npb25TdGF0ZZSTlCmBlF2UKIwBdZQoTegDTYgT"
                "SwJOTegDSwCIdJSFlE2IE4oGAGjlz4sBSwFlYi4=",
}


def test_state_from_before_the_pipeline_clock_loads() -> None:
    """Old states (wall times, version 1) load; after a 2 h downtime they are not expired."""
    wall = [1_700_000_000_000 + 2 * HOUR]

    def old(name: str) -> Any:
        return pickle.loads(base64.b64decode(OLD_STATES[name]))

    d = Deduplicator(DedupConfig(TTL, clock=lambda: wall[0]), old("dedup"))
    assert d.on_notify() == ((), False)
    assert d.on_item(ev("u", 2_000, "x"))[0] == ()
    s = Deduplicator(DedupConfig(TTL, clock=lambda: wall[0]), old("shard"), identity_of("id"))
    assert s.on_notify() == ((), False) and list(s.seen) == ["x", "y"]
    assert s.on_item(ev("u", 2_000, "y"))[0] == ()
    lane = Deduplicator(DedupConfig(TTL, clock=lambda: wall[0]), old("lane"), identity_of("id"))
    assert lane.on_notify() == ((), False)
    assert lane.on_item(ev("k", 1_300, "y"))[0] == ()
    a = SessionAnalyzer(SessionConfig(GAP, LATENESS, clock=lambda: wall[0]), old("sessions"))
    assert a.on_notify() == ((), False)
    a.on_item(ev("u", 6_000, "c"))
    out, _ = a.on_eof()
    assert [(x.session_id, x.start_ms, x.end_ms, x.count) for x in out] == [("u:1000", 1_000, 6_000, 3)]
    wall[0] += TTL  # the TTL of running time still expires them
    assert Deduplicator(DedupConfig(TTL, clock=lambda: wall[0]), old("dedup")).on_notify() == ((), False)
    assert d.on_notify() == ((), True)


# -- the pipeline clock itself -------------------------------------------------------------------

def test_clock_skew_variable_is_added_to_every_wall_read_and_removed_for_timers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dataflows.clock import SKEW_ENV, PipelineClock

    monkeypatch.setenv(SKEW_ENV, "3600.5")
    clock = PipelineClock()
    before = now_ms()
    p = clock.now()
    assert before + 3_600_500 <= p <= now_ms() + 3_600_500
    assert clock.to_real_ms(p) <= now_ms()  # Bytewax's timers run on the real clock
    # A restored state recorded pipeline time `before` (the process before the restart):
    clock.restored(before)
    assert before <= clock.now() <= before + (now_ms() - before)  # continues from it: no jump
    assert clock.to_real_ms(clock.now() + 1_000) >= now_ms()  # a wake-up 1 s of pipeline time ahead
    clock.restored(before - HOUR)  # an older state changes nothing
    assert clock.now() < before + HOUR


@pytest.mark.parametrize("raw", ["soon", "nan", "inf"])
def test_bad_clock_skew_is_a_config_error_naming_the_variable(raw: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from dataflows.clock import SKEW_ENV, PipelineClock
    from dataflows.config import ConfigError, load_config
    from dataflows.pipelines import sessions
    from tests.test_pipelines_sessions import REPO

    monkeypatch.setenv(SKEW_ENV, raw)
    with pytest.raises(ConfigError, match=SKEW_ENV):
        PipelineClock()
    cfg = load_config(REPO / "config" / "sessions.yaml",
                      environ={"STREAMFORGE__SOURCE__PATH": str(tmp_path / "in.jsonl"),
                               "STREAMFORGE__SINK__PATH": str(tmp_path / "out.jsonl"),
                               "STREAMFORGE__DLQ__PATH": str(tmp_path / "dlq.jsonl")})
    (tmp_path / "in.jsonl").write_text("")
    with pytest.raises(ConfigError, match=SKEW_ENV):
        sessions.build_flow(cfg)


def test_pipeline_time_never_goes_back_behind_a_restored_state() -> None:
    """A wall clock that stepped back across the restart (NTP): P jumps to the state's time."""
    from dataflows.clock import PipelineClock

    wall = [1_000_000]
    clock = PipelineClock(lambda: wall[0])
    clock.restored(1_500_000)
    assert clock.now() == 1_500_000
    wall[0] += 10
    assert clock.now() == 1_500_010
