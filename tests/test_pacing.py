"""`EpochPacer` with the epoch interval known up front (`$BYTEWAX_SNAPSHOT_INTERVAL`,
dataflows/flow/pacing.py): it parks from the first boundary on, instead of learning the interval
from two boundaries it spins through. Driven like Bytewax 0.21.1 calls a partition
(`next_batch`, `next_awake`, then `snapshot` when the interval has elapsed) on fixed clocks.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dataflows.flow.pacing import (
    FIRST_SHARE,
    INTERVAL_ENV,
    MAX_SHARE,
    WAIT_SHARE,
    EpochPacer,
    configured_interval,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _epoch(pacer: EpochPacer, clock: Clock, *, length: float, wait: float, polls: int = 4) -> float | None:
    """One epoch: the first poll after the previous boundary's `wait`, polls until `length`
    has elapsed (each mid-epoch `next_awake` must be "at once"), then the activation that
    closes it; returns that activation's park in seconds (None: at once)."""
    clock.t += wait
    step = (length - wait) / polls
    for _ in range(polls):
        pacer.polled()
        assert pacer.next_awake() is None
        clock.t += step
    pacer.polled()
    awake = pacer.next_awake()
    pacer.advanced()
    return None if awake is None else (awake - NOW).total_seconds()


@pytest.mark.parametrize(("value", "expected"), [("1", 1.0), ("10", 10.0), ("", None), ("0", None),
                                                 ("-3", None), ("1.5", None), ("soon", None)])
def test_the_interval_is_read_as_bytewax_reads_its_own_variable(value: str, expected: float | None) -> None:
    assert configured_interval({INTERVAL_ENV: value}) == expected
    assert configured_interval({}) is None


def test_with_the_interval_in_the_environment_the_first_boundary_is_parked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "1")
    clock = Clock()
    pacer = EpochPacer(clock=clock, wall=lambda: NOW)
    parks = [_epoch(pacer, clock, length=1.0, wait=w) for w in (0.0, 0.3, 0.2)]
    assert parks == pytest.approx([FIRST_SHARE * 1.0, WAIT_SHARE * 0.3, WAIT_SHARE * 0.2])


def test_a_given_interval_is_kept_when_a_boundary_comes_late_and_caps_the_park() -> None:
    clock = Clock()
    pacer = EpochPacer(clock=clock, wall=lambda: NOW, interval_s=1.0)
    assert _epoch(pacer, clock, length=1.4, wait=0.0, polls=2) == pytest.approx(FIRST_SHARE)  # a late boundary
    assert _epoch(pacer, clock, length=1.0, wait=0.9) == pytest.approx(MAX_SHARE * 1.0)
    assert _epoch(pacer, clock, length=1.0, wait=0.1) == pytest.approx(WAIT_SHARE * 0.1)  # still 1 s epochs


def test_without_an_interval_it_still_learns_it_from_two_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    clock = Clock()
    pacer = EpochPacer(clock=clock, wall=lambda: NOW)
    parks = [_epoch(pacer, clock, length=1.0, wait=w) for w in (0.0, 0.2, 0.2)]
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
    parks = [_epoch(pacer, clock, length=2.0, wait=w) for w in (0.2, 0.2, 0.2)]
    assert parks[:1] == [None]  # learning again: the interval from the boundaries after the first
    assert parks[1:] == pytest.approx([WAIT_SHARE * 0.2, WAIT_SHARE * 0.2])
