"""`EpochPacer`: a source partition parks through Bytewax's epoch-boundary wait (dataflows/flow/pacing.py).

Bytewax 0.21.1 (`src/inputs.rs`) calls a partition's `next_batch`, `next_awake`, then (when the
epoch interval has elapsed) `snapshot`, and re-activates it at its `next_awake`, at once when
that is past, also while it waits for the probe after a boundary. These tests drive the pacer
with that call order on a fake clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dataflows.connectors.files import JsonlSource
from dataflows.flow.pacing import MAX_SHARE, WAIT_SHARE, EpochPacer


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


NOW = datetime(2026, 1, 1, tzinfo=UTC)  # the pacers' wall clock here: a fixed instant


def _seconds_from_now(at: datetime | None) -> float | None:
    return None if at is None else (at - NOW).total_seconds()


def _epoch(pacer: EpochPacer, clock: Clock, *, interval: float, wait: float, polls: int = 4) -> float | None:
    """One epoch as Bytewax runs it: the first poll after the previous boundary's `wait`, then polls
    until the interval has elapsed; returns what `next_awake` said in the activation that closes it."""
    clock.t += wait
    step = (interval - wait) / polls
    for _ in range(polls):
        pacer.polled()
        assert pacer.next_awake() is None  # mid-epoch: poll again at once, as Bytewax would
        clock.t += step
    pacer.polled()
    awake = _seconds_from_now(pacer.next_awake())
    pacer.advanced()
    return awake


def test_it_parks_for_most_of_the_last_wait_once_it_has_learnt_the_interval() -> None:
    clock = Clock()
    pacer = EpochPacer(clock=clock, wall=lambda: NOW)
    interval, wait = 1.0, 0.2
    learning = [_epoch(pacer, clock, interval=interval, wait=0.0 if i == 0 else wait) for i in range(2)]
    assert learning == [None, None]  # it knows neither the interval nor a wait yet: Bytewax's own rule
    for _ in range(3):
        park = _epoch(pacer, clock, interval=interval, wait=wait)
        assert park == pytest.approx(WAIT_SHARE * wait)


def test_the_park_follows_a_longer_or_shorter_wait_and_is_capped_by_the_interval() -> None:
    clock = Clock()
    pacer = EpochPacer(clock=clock, wall=lambda: NOW)
    for wait in (0.0, 0.1, 0.1):
        _epoch(pacer, clock, interval=1.0, wait=wait)
    assert _epoch(pacer, clock, interval=1.0, wait=0.05) == pytest.approx(WAIT_SHARE * 0.05)
    assert _epoch(pacer, clock, interval=1.0, wait=0.9) == pytest.approx(MAX_SHARE * 1.0)


def test_a_wanted_wake_up_later_than_the_park_is_kept_and_an_earlier_one_is_not() -> None:
    clock = Clock()
    pacer = EpochPacer(clock=clock, wall=lambda: NOW)
    for wait in (0.0, 0.2, 0.2):
        _epoch(pacer, clock, interval=1.0, wait=wait)
    clock.t += 0.2
    for _ in range(5):
        pacer.polled()
        clock.t += 0.2
    pacer.polled()  # the activation that closes the epoch
    later = NOW + timedelta(seconds=5)
    assert pacer.next_awake(later) == later  # e.g. a tailing file with nothing new: its poll interval
    soon = NOW + timedelta(milliseconds=1)
    kept = _seconds_from_now(pacer.next_awake(soon))
    assert kept is not None and kept > 0.1  # the park wins over "at once" or "in 1 ms"


def test_a_file_partition_asks_to_be_woken_after_the_boundary_not_at_once(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(f'{{"i": {i}}}\n' for i in range(100)))
    part = JsonlSource(path, batch_size=5).build_part("in", str(path), None)
    clock = Clock()
    part._pacer = EpochPacer(clock=clock, wall=lambda: NOW)  # the partition's own pacer, on a fake clock
    awakes = []
    for _ in range(4):  # four epochs of 1 s, each boundary's wait 0.3 s
        clock.t += 0.3
        for _ in range(3):
            assert part.next_batch()
            clock.t += 0.7 / 3
        assert part.next_batch()
        awakes.append(_seconds_from_now(part.next_awake()))
        part.snapshot()
    part.close()
    assert awakes[:2] == [None, None]
    assert all(a is not None and a == pytest.approx(WAIT_SHARE * 0.3) for a in awakes[2:]), awakes
