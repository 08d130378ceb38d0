"""Wall-clock wake-ups for the patterns' `notify_at`, requested sparingly.

Bytewax 0.21.1 (`stateful_batch` in its Rust core) calls `notify_at()` on
every key touched in an activation, converts the returned `datetime`, and
keeps it in a per-operator map until it fires; a `None` return leaves an
already scheduled time in place (it does not cancel it), and a fired
notification is removed before `on_notify` runs. Each activation then scans
the whole map, so every key with a pending wake-up costs a little per batch
(the main throughput limit of the TTL and idle-session patterns at 100k
keys).

`Alarm.schedule` follows the `StatefulLogic` contract (always the next time,
a cached `datetime` rebuilt only when the wanted time leaves a slack window).
`Alarm.request` is the *sparse* mode the patterns' own wiring uses: it
mirrors Bytewax's map entry for the key and returns a `datetime` only when
Bytewax holds none or holds one later than wanted (a wake-up fires at most
`slack_ms` after the wanted time, possibly earlier: a key seen again since
wants a later time and is then re-armed). Sparse mode relies on the
0.21.1 behaviour above, so it is only for a logic handed to Bytewax
directly, not one composed inside another logic. Patterns re-check the
clock in `on_notify`, so an early notification is harmless.

Times here are real wall-clock ms (Bytewax's timers): the patterns decide
on pipeline time (`dataflows/clock.py`) and convert with
`PipelineClock.real_delta_ms` before asking for a wake-up.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["Alarm", "slack_for"]


def slack_for(period_ms: int) -> int:
    """Lateness allowed for a wake-up guarding a period: <= 1 s, or 1/16 of long periods."""
    return max(1, min(period_ms, max(1000, period_ms // 16)))


_last_wake: tuple[int, datetime] = (0, datetime.fromtimestamp(0, UTC))


def _wake_time(due_ms: int) -> datetime:
    """The `datetime` of `due_ms`; the last one is reused (keys due together ask for the same)."""
    global _last_wake
    ms, at = _last_wake
    if ms != due_ms:
        at = datetime.fromtimestamp(due_ms / 1000, UTC)
        _last_wake = (due_ms, at)
    return at


class Alarm:
    """The wake-up time of one key: `due_ms` (ms since the epoch) and its `datetime`.

    The patterns' logics *are* Alarms (a base class: no extra object per key
    for the garbage collector to walk); `at` is None while none is pending.
    """

    __slots__ = ("due_ms", "at")

    def __init__(self) -> None:
        self.due_ms = 0
        self.at: datetime | None = None

    def schedule(self, want_ms: int, slack_ms: int) -> datetime:
        """Always a time in `[want_ms, want_ms + slack_ms]` (the `StatefulLogic` contract), cached.

        The time is the last multiple of `slack_ms` in that window, so keys
        that want times close together share one `datetime` (`_wake_time`).
        """
        at = self.at
        if at is None or not want_ms <= self.due_ms <= want_ms + slack_ms:
            self.due_ms = due = (want_ms + slack_ms) // slack_ms * slack_ms
            self.at = at = _wake_time(due)
        return at

    def request(self, want_ms: int, slack_ms: int) -> datetime | None:
        """Sparse mode: a new time, or None to keep the one Bytewax holds (not later than wanted)."""
        if self.at is not None and self.due_ms <= want_ms + slack_ms:
            return None
        return self.schedule(want_ms, slack_ms)

    def fired(self) -> None:
        """Bytewax dropped the pending wake-up (it fired): the next request schedules anew."""
        self.at = None
