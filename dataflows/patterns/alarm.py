"""Wall-clock wake-ups for the patterns' `notify_at`, requested sparingly.

Bytewax 0.21.1 (`stateful_batch` in its Rust core) calls `notify_at()` on
every key touched in an activation, converts the returned `datetime`, and
keeps it in a per-operator map until it fires; a `None` return leaves an
already scheduled time in place (it does not cancel it), and a fired
notification is removed before `on_notify` runs. Each activation then scans
the whole map, so every key with a pending wake-up costs a little per batch
(the main throughput limit of the TTL and idle-session patterns at 100k
keys).

`Alarm` mirrors that map entry for one key, so a logic returns a `datetime`
only when Bytewax holds none for the key or holds one later than wanted:
a wake-up fires at most `slack_ms` after the wanted time, possibly earlier
(a key seen again since wants a later time; it is then re-armed). Patterns
re-check the clock in `on_notify`, so an early notification is harmless.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["Alarm", "slack_for"]


def slack_for(period_ms: int) -> int:
    """Lateness allowed for a wake-up guarding a period: <= 1 s, or 1/16 of long periods."""
    return max(1, min(period_ms, max(1000, period_ms // 16)))


class Alarm:
    """The wake-up Bytewax holds for one key (`due_ms`, ms since the epoch, or None)."""

    __slots__ = ("due_ms",)

    def __init__(self) -> None:
        self.due_ms: int | None = None

    def request(self, want_ms: int, slack_ms: int) -> datetime | None:
        """The value for `notify_at`: a new time in `[want, want + slack]`, or None to keep the pending one."""
        due = self.due_ms
        if due is not None and due <= want_ms + slack_ms:
            return None
        self.due_ms = due = want_ms + slack_ms
        return datetime.fromtimestamp(due / 1000, UTC)

    def fired(self) -> None:
        """Bytewax dropped the pending wake-up (it fired): the next request schedules anew."""
        self.due_ms = None
