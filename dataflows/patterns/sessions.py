"""SessionAnalyzer: event-time sessions per key, with allowed lateness.

Keyed by `Event.key`. Definitions (all times in event-time milliseconds):

- an event at `t` joins a session `[start, end]` iff
  `start - gap < t < end + gap`; an event that joins two sessions *bridges*
  them into one; a distance of exactly `gap` starts a new session;
- the key's *watermark* `W` is the largest event time seen for the key;
  with `advance_on_idle` (default) it also advances with the *pipeline
  clock* (`dataflows/clock.py`: wall time that does not count while the job
  is down) while the key is idle: once `P - P_W >= max(gap, T - W)` (`P_W`
  the pipeline time `W` last moved at, `T` the next close or drop
  threshold), `W` steps to exactly `T` (and `P_W` by `T - W`), repeatedly; so
  idle keys close and are discarded. Each step needs a full gap of pipeline
  time without a step, so a run (or a replay) shorter than the gap makes no
  idle step that its restored state did not already call for, however close
  a threshold is. The step is applied before each event of the key and by the
  wake-up, whichever comes first, to the same values: the wake-up only emits
  earlier what the key's next event would have emitted first, and a restart
  that took longer than the gap changes nothing (replay-stable; the argument
  is in `dataflows/clock.py`). Disable it for output that is a function of
  the input alone, but then a key's newest session closes only on a later
  event of the key (or EOF) and the key is never discarded;
- a session *closes* when `W >= end + gap` and is then emitted
  (`Session.revision` 0);
- an event is *late* iff `t < W - allowed_lateness`: it goes to the `late`
  output as `LateEvent(event, "beyond_allowed_lateness", watermark_ms=W)`
  and counts in `late_events`;
- a non-late event that falls in, extends or bridges a closed session updates
  it, and it is re-emitted (when closed again) with `revision + 1`;
- a closed session is retained while `W - allowed_lateness < end + gap`
  (until no non-late event can reach it), then dropped (checked on each
  event; an idle key's wake-up for a drop may come up to one gap later, so
  that closing a session does not reschedule it: the drop is the same, it
  only frees the state later); a key without
  sessions is discarded (`state_evictions`, reason `sessions_closed`). Its
  watermark goes with it: a later event of that key starts afresh.
- at EOF every session not yet emitted in its current form is emitted (state
  is kept: a resumed execution may still update it).

`session_id` = `f"{key}:{first_start}"` where `first_start` is the start of
the session when it was first created; a bridged session keeps the id (and
revision count) of the earliest of the sessions it merged. Each absorbed
session that was already emitted is retracted at once:
`SessionRetraction(key, session_id, revision, merged_into)`, with `revision`
one above its last emission; its id is not emitted again. The sessions output
is thus an upsert/retract stream keyed by `session_id`: a `Session` replaces
the row of its id (a higher revision wins), a `SessionRetraction` deletes it.

`aggregate(acc, event)` folds events into a session's `aggregate`, starting
from `initial()`; bridging two sessions needs `merge(acc_a, acc_b)`. Without
`aggregate`, sessions only count (`aggregate` is None).

State per key (`SessionState`): the key, its retained sessions
(`SessionState.spans`), the watermark, the pipeline time it last moved and
the pipeline time of the snapshot (version 2; version 1 state loads without).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dataflows.clock import PipelineClock, Wall, as_pipeline_clock, setstate_with_defaults
from dataflows.events import Event
from dataflows.patterns.alarm import Alarm, slack_for
from dataflows.records import frozen_factory

__all__ = [
    "LateEvent",
    "Session",
    "SessionAnalyzer",
    "SessionConfig",
    "SessionRetraction",
    "SessionState",
]

_EMPTY: tuple[()] = ()
LATE_REASON = "beyond_allowed_lateness"


@dataclass(frozen=True, slots=True)
class Session:
    """A session summary; re-emitted with a higher revision when a late event updates it."""

    key: str
    start_ms: int
    end_ms: int
    count: int
    aggregate: Any
    revision: int
    session_id: str


@dataclass(frozen=True, slots=True)
class SessionRetraction:
    """An emitted session absorbed by a bridge: delete `session_id` (now part of `merged_into`).

    `revision` is one above the retracted id's last `Session.revision`.
    """

    key: str
    session_id: str
    revision: int
    merged_into: str


@dataclass(frozen=True, slots=True)
class LateEvent:
    """An event older than the key's watermark minus the allowed lateness."""

    event: Event
    reason: str
    watermark_ms: int


SpanTuple = tuple[int, int, int, Any, int, int, bool]


@dataclass(frozen=True, slots=True)
class SessionState:
    """Snapshot of one key.

    `spans`: the retained sessions in start order, each
    `(start_ms, end_ms, count, aggregate, id_start_ms, emits, dirty)`:
    `id_start_ms` names the session (`session_id`), `emits` counts its
    emissions (the next revision), `dirty` says it changed since emitted.
    """

    key: str
    spans: tuple[SpanTuple, ...]
    watermark_ms: int
    wall_ms: int  # pipeline time `watermark_ms` last moved at (version 1: wall time, the same)
    version: int = 1
    clock_ms: int | None = None  # pipeline time of the snapshot (None: version 1, or no idle advance)

    __setstate__ = setstate_with_defaults


_session = frozen_factory(Session)
_late = frozen_factory(LateEvent)
_state = frozen_factory(SessionState)


class SessionConfig:
    """Settings shared by every key of one sessions step."""

    __slots__ = ("gap_ms", "lateness_ms", "aggregate", "initial", "merge", "clock",
                 "slack_ms", "on_late", "on_evict", "sparse_wakeups")

    def __init__(self, gap_ms: int, allowed_lateness_ms: int, *,
                 aggregate: Callable[[Any, Event], Any] | None = None,
                 initial: Callable[[], Any] | None = None,
                 merge: Callable[[Any, Any], Any] | None = None,
                 clock: PipelineClock | Wall | None = None,
                 on_late: Callable[[], None] | None = None,
                 on_evict: Callable[[], None] | None = None,
                 sparse_wakeups: bool = False) -> None:
        if gap_ms <= 0:
            raise ValueError(f"sessions gap_ms must be > 0, got {gap_ms}")
        if allowed_lateness_ms < 0:
            raise ValueError(f"sessions allowed_lateness_ms must be >= 0, got {allowed_lateness_ms}")
        if aggregate is not None and merge is None:
            raise ValueError("sessions: a custom aggregate needs merge(acc_a, acc_b) to bridge sessions")
        self.gap_ms = gap_ms
        self.lateness_ms = allowed_lateness_ms
        self.aggregate = aggregate
        self.initial = initial
        self.merge = merge
        # None: no idle advance (watermark by event time only).
        self.clock = None if clock is None else as_pipeline_clock(clock)
        self.slack_ms = slack_for(gap_ms)
        self.on_late = on_late
        self.on_evict = on_evict
        # True only when the logic is handed to Bytewax directly (see alarm.py).
        self.sparse_wakeups = sparse_wakeups


class _Span:
    __slots__ = ("start", "end", "count", "agg", "id_start", "emits", "dirty")

    def __init__(self, start: int, end: int, count: int, agg: Any, id_start: int, emits: int,
                 dirty: bool) -> None:
        self.start = start
        self.end = end
        self.count = count
        self.agg = agg
        self.id_start = id_start
        self.emits = emits
        self.dirty = dirty


class SessionAnalyzer(Alarm):
    """The sessions of one key (a Bytewax `StatefulLogic` by shape)."""

    STATE_VERSION = 2
    __slots__ = ("cfg", "key", "spans", "wm", "wall_ms", "next_ms", "wake_ms")

    def __init__(self, cfg: SessionConfig, state: SessionState | None = None) -> None:
        self.cfg = cfg
        self.due_ms, self.at = 0, None  # no wake-up pending (Alarm)
        self.spans: list[_Span] = []
        self.key: str | None = None
        self.wm: int | None = None
        self.wall_ms = 0
        # Watermark at which something next closes or drops (None: nothing retained), and
        # the watermark to wake up at when idle: drops may wait up to one more gap, so an
        # emitted session does not re-arm the wake-up of its key (see notify_at).
        self.next_ms: int | None = None
        self.wake_ms: int | None = None
        if state is not None:
            self.key = state.key
            self.wm = state.watermark_ms
            self.wall_ms = state.wall_ms
            self.spans = [_Span(*span) for span in state.spans]
            self.next_ms = self.wake_ms = self.wm  # re-evaluate (and advance) at the first notification
            if cfg.clock is not None:
                cfg.clock.restored(self.wall_ms if state.clock_ms is None else state.clock_ms)

    # -- events ----------------------------------------------------------------
    def on_batch(self, events: list[Event]) -> tuple[list[Any], bool]:
        """`on_item` over a batch; a key discarded mid-batch starts afresh with the next event."""
        if len(events) == 1:  # the common case at many keys: no list to build
            return self.on_item(events[0])
        out: list[Any] = []
        discard = False
        for event in events:
            if discard:
                self._reset()
            items, discard = self.on_item(event)
            if items:
                out.extend(items)
        return out, discard

    def _reset(self) -> None:
        """The state of a new key (the pending wake-up, Bytewax's, stays known to the alarm)."""
        self.spans = []
        self.key = self.wm = self.next_ms = self.wake_ms = None
        self.wall_ms = 0

    def on_item(self, event: Event) -> tuple[Any, bool]:
        cfg = self.cfg
        clock = cfg.clock
        now = 0
        wm = self.wm
        if clock is not None:
            now = clock.now()
            nxt = self.next_ms
            idle = now - self.wall_ms
            if nxt is not None and wm is not None and idle >= cfg.gap_ms and idle >= nxt - wm:
                return self._step_then_item(now, event)
        t = event.event_time_ms
        if wm is None or t > wm:
            if wm is None:
                self.key = event.key
            self.wm = wm = t
            if clock is not None:
                self.wall_ms = now
        elif t < wm - cfg.lateness_ms:
            if cfg.on_late is not None:
                cfg.on_late()
            return (_late(event, LATE_REASON, wm),), False
        spans = self.spans
        gap = cfg.gap_ms
        agg = cfg.aggregate
        if not spans:
            acc = cfg.initial() if cfg.initial is not None else None
            spans.append(_Span(t, t, 1, agg(acc, event) if agg is not None else None, t, 0, True))
            return self._fire()
        last = spans[-1]
        nxt = self.next_ms
        if last.start <= t < last.end + gap:  # in or extending the newest session
            if t > last.end:
                last.end = t
            last.count += 1
            if agg is not None:
                last.agg = agg(last.agg, event)
            if last.dirty and nxt is not None and wm < nxt:
                # Its threshold only grew: nothing is due. Keep the wake-up exact in the
                # common one-session case (a stale, early one would re-arm the alarm).
                if len(spans) == 1:
                    self.next_ms = self.wake_ms = last.end + gap
                return _EMPTY, False
            last.dirty = True
            return self._fire()
        if t >= last.end + gap:  # a new newest session
            acc = cfg.initial() if cfg.initial is not None else None
            spans.append(_Span(t, t, 1, agg(acc, event) if agg is not None else None, t, 0, True))
            wake = self.wake_ms
            if nxt is not None and wake is not None and wm < nxt and wm < t + gap:
                self.next_ms = min(nxt, t + gap)
                self.wake_ms = min(wake, t + gap)
                return _EMPTY, False
            return self._fire()
        retracted = self._merge_in(t, event)
        if not retracted:
            return self._fire()
        out, discard = self._fire()
        return [*retracted, *out], discard

    def _step_then_item(self, now: int, event: Event) -> tuple[Any, bool]:
        """The idle step the wake-up would have made by `now`, then the event (rare path)."""
        early, gone = self._step_idle(now)
        if gone:  # every session dropped: the event starts the key afresh
            self.key = self.wm = self.next_ms = self.wake_ms = None
        out, discard = self.on_item(event)
        return [*early, *out], discard

    def _step_idle(self, now: int) -> tuple[Any, bool]:
        """Step the watermark to each threshold pipeline time `now` has reached; (emitted, discard)."""
        out: Any = _EMPTY
        gap = self.cfg.gap_ms
        while True:
            nxt, wm = self.next_ms, self.wm
            assert wm is not None
            idle = now - self.wall_ms
            if nxt is None or idle < gap or idle < nxt - wm:
                return out, False
            if nxt > wm:  # to the threshold itself, never beyond: the wake-up's lateness is no input
                self.wm = nxt
                self.wall_ms += nxt - wm
            emitted, gone = self._fire()
            if emitted:
                out = [*out, *emitted]
            if gone:
                return out, True

    def _merge_in(self, t: int, event: Event) -> list[SessionRetraction]:
        """Out-of-order event: join, bridge or insert among the retained sessions.

        Returns the retractions of the emitted sessions a bridge absorbed.
        """
        cfg = self.cfg
        gap = cfg.gap_ms
        spans = self.spans
        hits = [i for i, s in enumerate(spans) if s.start - gap < t < s.end + gap]
        agg = cfg.aggregate
        if not hits:
            acc = cfg.initial() if cfg.initial is not None else None
            span = _Span(t, t, 1, agg(acc, event) if agg is not None else None, t, 0, True)
            spans.insert(bisect.bisect_left([s.start for s in spans], t), span)
            return []
        first = spans[hits[0]]
        retracted: list[SessionRetraction] = []
        for i in hits[1:]:
            other = spans[i]
            if other.emits:
                retracted.append(self._retract(other, first))
            first.end = max(first.end, other.end)
            first.count += other.count
            if agg is not None and cfg.merge is not None:
                first.agg = cfg.merge(first.agg, other.agg)
        for i in reversed(hits[1:]):
            del spans[i]
        first.start = min(first.start, t)
        first.end = max(first.end, t)
        first.count += 1
        if agg is not None:
            first.agg = agg(first.agg, event)
        first.dirty = True
        return retracted

    def _retract(self, gone: _Span, into: _Span) -> SessionRetraction:
        key = self.key
        assert key is not None
        return SessionRetraction(key, f"{key}:{gone.id_start}", gone.emits, f"{key}:{into.id_start}")

    def _fire(self) -> tuple[Any, bool]:
        """Emit closed sessions, drop expired ones, discard the key when none remain."""
        wm = self.wm
        assert wm is not None
        cfg = self.cfg
        gap = cfg.gap_ms
        late = cfg.lateness_ms
        horizon = wm - late
        spans = self.spans
        out: Any = _EMPTY
        drop = 0
        nearest: int | None = None
        wake: int | None = None
        for s in spans:
            close = s.end + gap
            if s.dirty and wm >= close:
                if out is _EMPTY:
                    out = []
                out.append(self._emit(s))
            if horizon >= close:
                drop += 1  # ends are sorted: the expired sessions are a prefix
                continue
            if s.dirty:
                due = wake_at = close
            else:
                due = close + late
                wake_at = due + gap
            if nearest is None or due < nearest:
                nearest = due
            if wake is None or wake_at < wake:
                wake = wake_at
        self.next_ms = nearest
        self.wake_ms = wake
        if drop:
            del spans[:drop]
            if not spans:
                if cfg.on_evict is not None:
                    cfg.on_evict()
                return out, True
        return out, False

    def _emit(self, s: _Span) -> Session:
        key = self.key
        assert key is not None
        out = _session(key, s.start, s.end, s.count, s.agg, s.emits, f"{key}:{s.id_start}")
        s.emits += 1
        s.dirty = False
        return out

    # -- lifecycle ---------------------------------------------------------------
    def on_notify(self) -> tuple[Any, bool]:
        self.fired()
        clock = self.cfg.clock
        if clock is None or self.wm is None:
            return _EMPTY, False
        return self._step_idle(clock.now())

    def on_eof(self) -> tuple[Any, bool]:
        return [self._emit(s) for s in self.spans if s.dirty], False

    def wake_wall_ms(self) -> int | None:
        """The real wall time (ms) of the next idle step, or None (none due)."""
        nxt = self.wake_ms
        if nxt is None or self.cfg.clock is None or self.wm is None:
            return None
        return self.wall_ms + max(self.cfg.gap_ms, nxt - self.wm) + self.cfg.clock.real_delta_ms

    def notify_at(self) -> datetime | None:
        want = self.wake_wall_ms()
        if want is None:
            return None
        if self.cfg.sparse_wakeups:
            return self.request(want, self.cfg.slack_ms)
        return self.schedule(want, self.cfg.slack_ms)

    def span_tuples(self) -> tuple[SpanTuple, ...]:
        """The retained sessions as `SessionState.spans` holds them."""
        return tuple([(s.start, s.end, s.count, s.agg, s.id_start, s.emits, s.dirty)
                      for s in self.spans])

    def snapshot(self) -> SessionState:
        assert self.key is not None and self.wm is not None
        clock = self.cfg.clock
        return _state(self.key, self.span_tuples(), self.wm, self.wall_ms, self.STATE_VERSION,
                      None if clock is None else clock.now())


def __getattr__(name: str) -> Any:
    """`analyze_sessions` and `SessionOutputs` (Bytewax wiring) live in `dataflows.flow`."""
    if name in ("analyze_sessions", "SessionOutputs"):
        import dataflows.flow

        return getattr(dataflows.flow, name)
    raise AttributeError(name)
