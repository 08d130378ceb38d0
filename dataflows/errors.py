"""Guarded steps: a failing item becomes a dead letter, never a crash.

Each operator here wraps a user-supplied function. It returns two streams:
the good results and the `DeadLetter`s of the items whose function raised.
Nothing is dropped silently; every dead letter counts in `dlq_event_count`.

    ok, bad = guarded_map("enrich", events, enrich, pipeline="orders")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from dataflows.dead_letter import DeadLetter, ErrorCode, counted_dead_letter

X = TypeVar("X")
Y = TypeVar("Y")

__all__ = ["Guarded", "guarded_map", "split_dead_letters"]


@dataclass(frozen=True)
class Guarded:
    """The two outputs of a guarded step."""

    ok: Stream[Any]
    dlq: Stream[DeadLetter]

    def __iter__(self):  # allows `ok, bad = guarded_map(...)`
        return iter((self.ok, self.dlq))


def _to_dead_letter(item: Any, exc: BaseException, step_id: str, pipeline: str) -> DeadLetter:
    code = getattr(exc, "error_code", ErrorCode.USER_FUNCTION)
    return counted_dead_letter(item, code=code, stage=step_id, pipeline=pipeline, exc=exc)


@operator
def split_dead_letters(step_id: str, up: Stream[Any]) -> Guarded:
    """Split a stream of results and `DeadLetter`s into two streams."""
    b = op.branch("split", up, lambda x: not isinstance(x, DeadLetter))
    return Guarded(b.trues, b.falses)


@operator
def guarded_map(
    step_id: str, up: Stream[X], mapper: Callable[[X], Y], *, pipeline: str
) -> Guarded:
    """Map `mapper` over items; an item whose mapper raises becomes a dead letter."""
    stage = step_id

    def shim(item: X) -> Any:
        try:
            return mapper(item)
        except Exception as exc:  # noqa: BLE001
            return _to_dead_letter(item, exc, stage, pipeline)

    return split_dead_letters("split", op.map("apply", up, shim))
