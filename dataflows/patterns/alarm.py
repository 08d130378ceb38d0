"""Wall-clock notification times for the patterns' `notify_at`.

Bytewax asks every touched key for its next notification time after each
activation, as a timezone-aware `datetime`. Building a `datetime` per event is
the most expensive thing a simple pattern does, so an `Alarm` caches one and
rebuilds it only when the wanted time moves out of a `slack` window: the
notification fires at most `slack_ms` after it was wanted, never before.
Patterns re-check the clock in `on_notify`, so an early or spurious
notification is harmless.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["Alarm", "slack_for"]


def slack_for(period_ms: int) -> int:
    """Default lateness allowed for a wake-up guarding a period: <= 1 s, <= 1/16 of long periods."""
    return max(1, min(period_ms, max(1000, period_ms // 16)))


class Alarm:
    """A cached wall-clock wake-up time (milliseconds since the Unix epoch)."""

    __slots__ = ("due_ms", "at")

    def __init__(self) -> None:
        self.due_ms = 0
        self.at: datetime | None = None

    def schedule(self, want_ms: int, slack_ms: int) -> datetime:
        """A time in `[want_ms, want_ms + slack_ms]`, reusing the cached one when it fits."""
        at = self.at
        if at is None or want_ms > self.due_ms or want_ms + slack_ms < self.due_ms:
            self.due_ms = due = want_ms + slack_ms
            self.at = at = datetime.fromtimestamp(due / 1000, UTC)
        return at
