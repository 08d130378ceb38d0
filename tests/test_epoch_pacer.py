"""`EpochPacer`: a source partition parks through Bytewax's epoch-boundary wait (dataflows/flow/pacing.py).

Bytewax 0.21.1 (`src/inputs.rs`) calls a partition's `next_batch`, `next_awake`, then (when the
epoch interval has elapsed) `snapshot`, and re-activates it at its `next_awake`, at once when
that is past, also while it waits for the probe after a boundary. These tests drive the pacer
with that call order on a fake clock. With the interval known up front (`interval_s`, or
`$BYTEWAX_SNAPSHOT_INTERVAL`, which the supervisor sets to the child's `-s`) it parks from the
first boundary on instead of learning the interval from two boundaries it spins through.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dataflows.connectors.files import JsonlSource
from dataflows.flow.pacing import (
    FIRST_SHARE,
    INTERVAL_ENV,
    MAX_SHARE,
    WAIT_SHARE,
    EpochPacer,
    configured_interval,
)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


NOW = datetime(2026, 1, 1, tzinfo=UTC)  # the pacers' wall clock here: a fixed instant


@pytest.fixture(autouse=True)
def _no_interval_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pacer learns the interval unless a test gives it (`interval_s`, `$BYTEWAX_SNAPSHOT_INTERVAL`)."""
    monkeypatch.delenv(INTERVAL_ENV, raising=False)


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


@pytest.mark.parametrize(("value", "expected"), [("1", 1.0), ("10", 10.0), ("", None), ("0", None),
                                                 ("-3", None), ("1.5", None), ("soon", None)])
def test_the_interval_is_read_as_bytewax_reads_its_own_variable(value: str, expected: float | None) -> None:
    assert configured_interval({INTERVAL_ENV: value}) == expected
    assert configured_interval({}) is None


def test_with_the_interval_in_the_environment_the_first_boundary_is_parked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "1")
    clock = Clock()
    pacer = EpochPacer(clock=clock, wall=lambda: NOW)
    parks = [_epoch(pacer, clock, interval=1.0, wait=w) for w in (0.0, 0.3, 0.2)]
    assert parks == pytest.approx([FIRST_SHARE * 1.0, WAIT_SHARE * 0.3, WAIT_SHARE * 0.2])


def test_a_given_interval_is_kept_when_a_boundary_comes_late_and_caps_the_park() -> None:
    clock = Clock()
    pacer = EpochPacer(clock=clock, wall=lambda: NOW, interval_s=1.0)
    assert _epoch(pacer, clock, interval=1.4, wait=0.0, polls=2) == pytest.approx(FIRST_SHARE)  # a late boundary
    assert _epoch(pacer, clock, interval=1.0, wait=0.9) == pytest.approx(MAX_SHARE * 1.0)
    assert _epoch(pacer, clock, interval=1.0, wait=0.1) == pytest.approx(WAIT_SHARE * 0.1)  # still 1 s epochs


def test_without_an_interval_it_still_learns_it_from_two_boundaries() -> None:
    clock = Clock()
    pacer = EpochPacer(clock=clock, wall=lambda: NOW)
    parks = [_epoch(pacer, clock, interval=1.0, wait=w) for w in (0.0, 0.2, 0.2)]
    assert parks[:2] == [None, None]
    assert parks[2] == pytest.approx(WAIT_SHARE * 0.2)


def test_a_given_interval_that_is_not_bytewaxs_costs_one_park_then_the_pacer_learns_the_real_one() -> None:
    clock = Clock()
    pacer = EpochPacer(clock=clock, wall=lambda: NOW, interval_s=1.0)  # Bytewax closes epochs every 2 s here
    awakes = []
    for _ in range(20):  # one 2 s epoch, polled every 0.1 s; no snapshot() in it
        pacer.polled()
        awakes.append(pacer.next_awake())
        clock.t += 0.1
    assert [i for i, a in enumerate(awakes) if a is not None] == [10]  # the one park, at the wrong 1 s
    pacer.polled()
    pacer.next_awake()
    pacer.advanced()  # Bytewax's real boundary, at 2 s
    parks = [_epoch(pacer, clock, interval=2.0, wait=w) for w in (0.2, 0.2, 0.2)]
    assert parks[:1] == [None]  # learning again: the interval from the boundaries after the first
    assert parks[1:] == pytest.approx([WAIT_SHARE * 0.2, WAIT_SHARE * 0.2])
