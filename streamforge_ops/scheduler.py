"""When to checkpoint, compact and restart: pure timing logic, no I/O.

`CheckpointClock` mirrors `execution.checkpointing.*`: a checkpoint is due
`interval` after the previous one started, but never sooner than `min_pause`
after the previous one ended, and never while one is in flight. A failed
checkpoint counts as ended: the next interval tries again.

`Backoff` is the restart delay: `dataflows.retry.RetryPolicy`'s formula (the one
backoff of StreamForge; no jitter: one supervisor per job), `initial * multiplier**n`
capped at `max`, with the count reset once the child has run stably for `max` seconds.

`RestartBudget` is `recovery.max-restarts` over `recovery.restart-window` (FKO's
restarts threshold / window): a restart is allowed unless `limit` restarts
already happened within the last `window` seconds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dataflows.retry import RetryPolicy

__all__ = ["Backoff", "CheckpointClock", "Every", "RestartBudget"]


@dataclass
class CheckpointClock:
    """Decides when the next checkpoint starts (times are monotonic seconds)."""

    interval: float
    min_pause: float
    last_start: float
    last_end: float | None = None
    in_flight: bool = False

    def due(self, now: float) -> bool:
        if self.in_flight or now < self.last_start + self.interval:
            return False
        return self.last_end is None or now >= self.last_end + self.min_pause

    def started(self, now: float) -> None:
        self.in_flight, self.last_start = True, now

    def ended(self, now: float) -> None:
        self.in_flight, self.last_end = False, now


@dataclass
class Every:
    """A plain periodic timer (compaction)."""

    interval: float
    last: float

    def due(self, now: float) -> bool:
        if now < self.last + self.interval:
            return False
        self.last = now
        return True


@dataclass
class Backoff:
    """Restart delays: `RetryPolicy.backoff` of the failures in a row (`recovery.restart.*`)."""

    initial: float
    max: float
    multiplier: float = 2.0
    failures: int = 0

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(initial_backoff_s=self.initial, max_backoff_s=self.max, multiplier=self.multiplier,
                           jitter=0.0)

    def next_delay(self, ran_for: float) -> float:
        """Delay before restarting a child that crashed after `ran_for` seconds."""
        if ran_for >= self.max:
            self.failures = 0
        delay = self.policy.backoff(self.failures)
        self.failures += 1
        return delay


@dataclass
class RestartBudget:
    """At most `limit` restarts within any `window` seconds (`limit` 0 = unlimited)."""

    limit: int
    window: float
    times: deque[float] = field(default_factory=deque)

    def allow(self, now: float) -> bool:
        """True (and the restart at `now` is counted) unless the window's budget is spent."""
        while self.times and self.times[0] <= now - self.window:
            self.times.popleft()
        if self.limit and len(self.times) >= self.limit:
            return False
        self.times.append(now)
        return True
