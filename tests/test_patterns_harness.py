"""Helpers for the pattern tests: build and run a one-pattern dataflow (no tests here).

`run_pattern` runs `events -> body -> TestingSink` on 1 worker (`run_main`),
on N workers in one process (`cluster_main` with `worker_count_per_proc`), or
with a recovery directory. With `TestingSource.ABORT()` items in the input,
the first execution stops there; calling again with the same list and
recovery directory resumes from the last committed epoch (the ABORT item is
not triggered twice).

Use one ABORT per input: Bytewax 0.21.1's TestingSource does not count a
skipped (already triggered) ABORT in its resume position, so after passing
one, every later resume position is one item short and the resume replays an
item whose effect is already in the restored state (found by the sessions
recovery test: a count one too high).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from dataflows.events import Event

Body = Callable[[Stream[Event]], Stream[Any]]


def frozen_clock() -> int:
    """A wall clock that never moves: no wall-clock expiry or idle close during a test."""
    return 0


def ev(key: str, t: int, value: Any = None, *, op_: str | None = None, eid: str | None = None,
       source: str = "test", headers: tuple[tuple[str, bytes], ...] = ()) -> Event:
    """A test Event; the id defaults to `{key}@{t}`."""
    return Event(key, value, t, eid or f"{key}@{t}", source, op_, headers)


def run_pattern(body: Body, items: Sequence[Any], *, workers: int = 1,
                recovery_dir: Path | None = None, batch_size: int = 2,
                out: list[Any] | None = None) -> list[Any]:
    """Run `items -> body -> sink` once and return the sink list (appended to `out` if given)."""
    out = [] if out is None else out
    flow = Dataflow("patterns_test")
    src = op.input("in", flow, TestingSource(items, batch_size=batch_size))
    op.output("out", body(src), TestingSink(out))
    rc = RecoveryConfig(recovery_dir) if recovery_dir is not None else None
    if workers == 1:
        run_main(flow, epoch_interval=timedelta(0), recovery_config=rc)
    else:
        cluster_main(flow, [], 0, epoch_interval=timedelta(0), recovery_config=rc,
                     worker_count_per_proc=workers)
    return out


def run_with_abort(body: Body, events: Sequence[Event], abort_at: int, tmp: Path,
                   *, batch_size: int = 2) -> list[Any]:
    """Run with recovery, aborting before index `abort_at`, then resume to the end.

    Returns the combined sink output of all executions (replayed outputs of
    the resume epoch appear twice: TestingSink is at-least-once).
    """
    rec = tmp / "recovery"
    rec.mkdir()
    init_db_dir(rec, 2)
    items: list[Any] = list(events)
    items.insert(abort_at, TestingSource.ABORT())
    out: list[Any] = []
    for _ in range(2):
        run_pattern(body, items, recovery_dir=rec, batch_size=batch_size, out=out)
    return out


def by_id(items: Sequence[Any]) -> dict[str, Any]:
    """Output records by `event_id` (or `session_id`+revision), checking replays are identical."""
    seen: dict[str, Any] = {}
    for item in items:
        ident = _ident(item)
        assert seen.get(ident, item) == item, f"replay of {ident} differs: {seen[ident]!r} vs {item!r}"
        seen[ident] = item
    return seen


def _ident(item: Any) -> str:
    if hasattr(item, "session_id"):
        return f"{item.session_id}#{item.revision}"
    if hasattr(item, "event") and hasattr(item, "watermark_ms"):
        return f"late:{item.event.event_id}"
    return f"{type(item).__name__}:{item.event_id}"
