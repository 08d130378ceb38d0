"""The pipeline clock: wall time that does not advance while the job is down.

Every time-driven decision of the stateful patterns (dedup idle expiry, the
idle watermark advance of sessions with `advance-on-idle`) is made on
*pipeline time* `P`, never on the raw wall clock. `P` is kept in state (the
patterns store their "last seen" times as pipeline times, and every snapshot
its own pipeline time) and continues from the checkpoint at a resume:

- a fresh process: `P = wall`;
- a resumed process: each restored state reports the pipeline time of its
  snapshot (`clock_ms`, the end of the epoch it was taken at; older state:
  its newest recorded time) through `restored(p)`; `P` jumps to the newest
  such `p` (the checkpoint's pipeline time) and then runs with the wall
  clock: `P = max(p_max, p_first + wall time run since)`. The downtime is
  not counted, so "TTL continues from checkpoint time" (the seed's rule); `P`
  never goes back behind a restored state (a wall clock that stepped back is
  absorbed). Bytewax 0.21.1 builds every restored logic (and asks its
  `notify_at`) before the first item of the execution, so the offset is set
  before any decision. One clock per flow and process (the pipelines share
  one between their steps).

Why the replay then decides like the failure-free run (the exactly-once
argument; `TransactionalWriter` skips by `sf-event-id`, so a replay must
reproduce the committed output):

1. Every *item* decision is a function of the restored state, the item and
   `P` at its arrival: dedup judges by event time (`judge`) against an anchor
   that counts as absent once `P - last_seen >= ttl`; sessions step their
   watermark to each close/drop threshold that `P` has reached (each step
   after a full gap without one) before they handle the item. Whether or not
   Bytewax's wake-up fired first does not change the outcome.
2. Wake-ups (`notify_at`) only make that same step happen *earlier*: they
   free the state or emit the closed sessions that the next item of the key
   would have produced first, with identical content (the watermark is
   stepped to the threshold itself, not to the wake-up's late wall time, so
   the jitter of Bytewax's timer and the slack of `alarm.py` change nothing).
3. After a restart, `P` starts from the checkpoint's pipeline time, so a
   restart that took longer than the TTL or the gap makes no decision the
   original run did not make at the same input positions: the replay's items
   arrive at a pipeline time no later than in the original run. With 1 and
   2, a restart from a snapshot continues exactly like the run without it
   (`tests/test_replay_determinism.py` checks this as a property).

What remains wall-clock-dependent is the running time itself: a key whose
idle threshold passed in the original run *inside the replayed window*
(between the restored checkpoint and the crash) and that received its next
item in that window too may decide differently, because the replay reaches
that item sooner. For output that is a function of the input alone use
`patterns.sessions.advance-on-idle: false` (sessions close only by event
time); dedup then bounds that window by the checkpoint interval (keep it far
below `patterns.dedup.ttl`).

`STREAMFORGE_CLOCK_SKEW_SECONDS` (float, default 0; **test only**) is added to
every wall-clock read of the pipeline clock (`PipelineClock()` reads it once,
when the flow is built; the chaos harness restarts the process with +7200):
a process started with +3600 sees a restart that took an hour. Bytewax's own
timers keep the real clock: `real_delta_ms` converts a pipeline time into the
real time `notify_at` must return. This module imports no Bytewax.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from dataflows.config import ConfigError

__all__ = ["SKEW_ENV", "PipelineClock", "as_pipeline_clock", "clock_skew_ms", "setstate_with_defaults",
           "system_wall_ms"]

SKEW_ENV = "STREAMFORGE_CLOCK_SKEW_SECONDS"
Wall = Callable[[], int]
_time_ns = time.time_ns


def system_wall_ms() -> int:
    """The real wall clock in ms since the Unix epoch (what Bytewax's timers use)."""
    return _time_ns() // 1_000_000


def clock_skew_ms(environ: Mapping[str, str] | None = None) -> int:
    """`STREAMFORGE_CLOCK_SKEW_SECONDS` in ms (0 when unset); ConfigError naming it when not a number."""
    env = os.environ if environ is None else environ
    raw = env.get(SKEW_ENV, "").strip()
    if not raw:
        return 0
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"{SKEW_ENV}: expected a number of seconds, got {raw!r}") from None
    if not math.isfinite(seconds):
        raise ConfigError(f"{SKEW_ENV}: expected a finite number of seconds, got {raw!r}")
    return int(seconds * 1000)


class PipelineClock:
    """Pipeline time in ms: the (skewed) wall clock minus the downtime before this process resumed.

    `now()` is the hot call (one per event at most): a closure rebuilt when the
    offset changes, as cheap as reading the wall clock. `wall` is injectable
    for tests (ms since the epoch, e.g. a fake clock, then also taken as the
    clock of Bytewax's timers); by default it is the system clock plus
    `STREAMFORGE_CLOCK_SKEW_SECONDS` (subtracted again for the timers).
    """

    __slots__ = ("wall", "skew_ms", "offset_ms", "p_max", "now", "real_delta_ms", "_system")

    def __init__(self, wall: Wall | None = None, *, skew_ms: int | None = None) -> None:
        self._system = wall is None
        self.skew_ms = clock_skew_ms() if skew_ms is None else skew_ms
        self.wall: Wall = self._skewed if wall is None else wall
        self.offset_ms = 0  # P = wall() - offset_ms
        self.p_max: int | None = None  # newest pipeline time reported by a restored state
        self.now: Wall = self.wall
        self.real_delta_ms = 0  # the real (timer) wall ms minus P
        self._rebuild()

    def _skewed(self) -> int:
        return _time_ns() // 1_000_000 + self.skew_ms

    def _rebuild(self) -> None:
        off = self.offset_ms
        if self._system:
            k = self.skew_ms - off
            self.real_delta_ms = -k

            def now() -> int:
                return _time_ns() // 1_000_000 + k
        else:
            wall = self.wall
            self.real_delta_ms = off  # an injected wall is taken as the clock Bytewax's timers run on

            def now() -> int:
                return wall() - off
        self.now = now

    def restored(self, p_ms: int) -> None:
        """A restored state last recorded pipeline time `p_ms`: continue from the newest one."""
        p_max = self.p_max
        if p_max is not None and p_ms <= p_max:
            return
        self.p_max = p_ms
        off = self.wall() - p_ms
        if p_max is None or off < self.offset_ms:
            self.offset_ms = off
            self._rebuild()

    def to_real_ms(self, p_ms: int) -> int:
        """The real wall time (Bytewax's clock) at which pipeline time reaches `p_ms`."""
        return p_ms + self.real_delta_ms


def setstate_with_defaults(obj: Any, state: list[Any]) -> None:
    """`__setstate__` of a frozen slots dataclass whose later versions appended defaulted fields.

    Pickles of a frozen slots dataclass hold the field values in order, so a
    state pickled before a field was appended (e.g. `clock_ms`) is a shorter
    list: the missing trailing fields get their defaults.
    """
    for i, f in enumerate(dataclasses.fields(obj)):
        object.__setattr__(obj, f.name, state[i] if i < len(state) else f.default)


def as_pipeline_clock(clock: PipelineClock | Wall | None) -> PipelineClock:
    """`clock` itself, a PipelineClock over a wall function (tests), or a new system one."""
    if isinstance(clock, PipelineClock):
        return clock
    return PipelineClock(clock)
