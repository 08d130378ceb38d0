"""A source partition that sleeps through Bytewax's epoch-boundary wait instead of spinning.

Bytewax 0.21.1's partitioned input (`src/inputs.rs`, `FixedPartitionedSource`) works per
activation like this, for each partition:

1. if the dataflow's probe has passed the partition's epoch (everything of the previous
   epoch is written and snapshotted) and the partition is due (`next_awake`), it calls
   `next_batch()` and then `next_awake()`;
2. if the epoch interval has elapsed since the partition's epoch started, it calls
   `snapshot()` and moves the partition to the next epoch;
3. it asks to be activated again at the earliest `next_awake` of its partitions, at once
   when that is in the past (`None` after a non-empty batch means "now").

Right after step 2 the probe is behind the new epoch until every worker has closed the
old one (the sinks' commits, the snapshot writes, and on a cluster the progress messages
between processes). While it waits, step 1 is skipped but `next_awake` stays what it was,
in the past, so the operator re-activates itself at once, tens of thousands of times a
second: on a cluster each process spins on a core while the other commits, on a machine
whose cores the broker and the other process need.

`EpochPacer` lets the partition ask, in the `next_awake()` call that precedes the
epoch's end, to be woken a little before the wait is expected to be over. It takes the
epoch interval from `$BYTEWAX_SNAPSHOT_INTERVAL` (Bytewax's own variable for `-s`, whole
seconds; `configured_interval`) when the process has it, else learns it from the
partition's own boundaries (the shortest time between two `snapshot()` calls, which Bytewax
never makes shorter than the interval: known from the third boundary on), knows when the
partition's epoch started (its last `snapshot()`), and learns the wait from the previous
boundary (from that `snapshot()` to the next `next_batch()`). It wakes after `WAIT_SHARE`
of the last wait, at most `MAX_SHARE` of the epoch interval, so a boundary whose wait got
shorter costs little idle time and one whose wait got longer spins only for the rest; at
the first boundary, with no wait seen yet, it parks `FIRST_SHARE` of the interval (that
wait is usually the longest: the sinks build their partitions on their first items). Nothing
about what is read or when epochs close changes: only when an idle partition is polled.

Why it matters most on a cluster: a process whose partitions wait for the other
process's part of the epoch re-activates its input operator about 700 000 times a second
(measured with a uprobe on Timely's `step_or_park`), on a core the other process needs.
Without the interval, the first two boundaries (and a third when the first measured gap
ran long) were not parked at all.

    pacer = EpochPacer()
    pacer.polled()              # at the top of next_batch()
    awake = pacer.next_awake()  # from next_awake(): None (poll at once) or a UTC datetime
    pacer.advanced()            # from snapshot()
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

__all__ = ["INTERVAL_ENV", "EpochPacer", "configured_interval"]

WAIT_SHARE = 0.8  # of the previous boundary's wait
MAX_SHARE = 0.5  # of the epoch interval
FIRST_SHARE = 0.25  # of the epoch interval: the park of the first boundary (no wait seen yet)
INTERVAL_ENV = "BYTEWAX_SNAPSHOT_INTERVAL"  # bytewax.run's default for `-s` (whole seconds)
EARLY_S = 0.005  # predict the boundary this much early: Bytewax's `now` precedes our poll time
_SAME_ACTIVATION_S = 0.005  # a snapshot() this soon after next_batch() is in the same activation


def configured_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """The epoch interval in seconds from `$BYTEWAX_SNAPSHOT_INTERVAL` (as `bytewax.run` reads
    it: whole seconds), or None when unset or not a positive whole number."""
    try:
        seconds = int(env.get(INTERVAL_ENV, ""))
    except ValueError:
        return None
    return float(seconds) if seconds > 0 else None


class EpochPacer:
    """When a source partition should next be polled around Bytewax's epoch boundaries.

    Keeps: the epoch interval (given, or learnt), when the partition's current epoch
    started (as Bytewax counts it: the poll time of the activation that advanced it), the
    last poll time, and the last boundary's wait."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC),
                 interval_s: float | None = None) -> None:
        """`interval_s`: Bytewax's epoch interval when known (default: `configured_interval()`);
        None: learnt from the boundaries. A given interval that predicts a boundary Bytewax
        does not make (a park, then a poll with no `snapshot()` between) is dropped for the
        learnt one: at most one park in the middle of an epoch."""
        self._given = interval_s if interval_s is not None else configured_interval()
        self._epoch_s: float | None = self._given
        self._clock, self._wall = clock, wall
        self._polled_at = clock()
        self._epoch_started = self._polled_at  # Bytewax starts a partition's epoch when it builds it
        self._advanced_at: float | None = None  # set by advanced(), cleared by the next poll
        self._wait = 0.0
        self._boundaries = 0
        self._parked = False  # the last next_awake() parked for a boundary (checked by the next poll)

    def polled(self) -> None:
        """At the top of `next_batch()`: Bytewax's `now` of this activation, near enough."""
        now = self._polled_at = self._clock()
        if self._advanced_at is not None:  # the first poll after a boundary: the wait is over
            self._wait, self._advanced_at = now - self._advanced_at, None
        elif self._parked and self._given is not None:  # parked, but Bytewax did not close the epoch:
            self._given = self._epoch_s = None  # the given interval is not Bytewax's; learn it instead
        self._parked = False

    def next_awake(self, wanted: datetime | None = None) -> datetime | None:
        """From `next_awake()`, with the time the partition itself `wanted` to be woken at (None:
        at once): when the epoch ends in this very activation (then Bytewax waits for the
        probe), the later of that and the park's end; else `wanted` unchanged."""
        if self._epoch_s is None or self._polled_at - self._epoch_started < self._epoch_s - EARLY_S:
            return wanted
        if self._boundaries == 0:
            seconds = self._epoch_s * FIRST_SHARE
        elif self._wait > 0.0:
            seconds = min(self._wait * WAIT_SHARE, self._epoch_s * MAX_SHARE)
        else:
            return wanted
        park = self._wall() + timedelta(seconds=seconds)
        self._parked = True
        return park if wanted is None or wanted < park else wanted

    def advanced(self) -> None:
        """From `snapshot()`: Bytewax closes the partition's epoch now."""
        now = self._clock()
        started = self._polled_at if now - self._polled_at < _SAME_ACTIVATION_S else now
        gap = started - self._epoch_started
        # the first epoch started at build time, which this clock sees late: learn from the rest
        if self._given is None and self._boundaries and gap > 0 and (self._epoch_s is None or gap < self._epoch_s):
            self._epoch_s = gap
        self._boundaries += 1
        self._epoch_started, self._advanced_at = started, now
