"""Every pattern survives an abort + resume from its recovery directory, and runs alike on
2 workers.

Recovery: the input is run with `TestingSource.ABORT()` items (epoch per
batch); each abort stops the execution, the next one resumes from the last
committed epoch with the state of that epoch. Bytewax replays the items after
that epoch, and `TestingSink` is at-least-once: the combined output holds
some records twice. So the tests compare outputs by identity
(`event_id`, or `session_id` + revision): the replayed records must be
identical to the first ones (checked) and the set of identities must equal
that of an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Stream
from bytewax.recovery import init_db_dir
from bytewax.testing import TestingSource

from dataflows.events import Event
from dataflows.flow.legacy import shard_per_key_rows
from dataflows.patterns import analyze_sessions, deduplicate, materialize, merge_changes
from tests.test_patterns_harness import by_id, ev, frozen_clock, run_pattern, run_with_abort

KEYS = ("a", "b", "c", "d", "e")


def workload() -> list[Event]:
    """~70 events over 5 keys: repeats, out-of-order times, updates, no-ops, deletes, a re-sync."""
    out: list[Event] = []
    for i in range(60):
        key = KEYS[(i * 7) % 5]
        t = i * 10 - (25 if i % 6 == 0 else 0)
        opn: str | None = "delete" if i % 17 == 16 else None
        value = None if opn else {"n": i // 10, "key": key, "nested": {"q": [i % 3, i // 20]}}
        out.append(Event(key, value, t, f"w:{i}", "test", opn))
        if i % 12 == 8:  # out of order within lateness: bridges the key's closed and open sessions
            out.append(Event(key, value, t - 13, f"w:{i}b", "test", opn))
        if i == 52:  # beyond lateness for the sessions
            out.append(Event(key, value, t - 100, f"w:{i}late", "test", opn))
        if i == 40:  # a re-sync of generation 1 that sees only a and b
            for k in ("a", "b"):
                out.append(ev(k, 405, {"n": 9, "key": k}, op_="snapshot", eid=f"s1:{k}",
                              headers=(("sf-generation", b"1"),)))
            out.append(ev("__generation__", 405, {"generation": 1, "complete": True},
                          op_="generation", eid="g1"))
    return out


def _dedup(s: Stream[Event]) -> Stream[Any]:
    return deduplicate("dedup", s, ttl_ms=45, pipeline="t", clock=frozen_clock)


def _dedup_sharded(s: Stream[Event]) -> Stream[Any]:
    return deduplicate("dedup", s, ttl_ms=45, pipeline="t", clock=frozen_clock, shards=3)


def _dedup_per_key(s: Stream[Event]) -> Stream[Any]:
    return deduplicate("dedup", s, ttl_ms=45, pipeline="t", clock=frozen_clock, shards=None)


def _merger(s: Stream[Event]) -> Stream[Any]:
    return merge_changes("merge", s, pipeline="t")


def _sessions(s: Stream[Event]) -> Stream[Any]:
    sessions, late = analyze_sessions("sessions", s, gap_ms=40, allowed_lateness_ms=15,
                                      pipeline="t", advance_on_idle=False)
    return op.merge("all", sessions, late)


def _sessions_per_key(s: Stream[Event]) -> Stream[Any]:
    sessions, late = analyze_sessions("sessions", s, gap_ms=40, allowed_lateness_ms=15,
                                      pipeline="t", advance_on_idle=False, shards=None)
    return op.merge("all", sessions, late)


def _materializer(s: Stream[Event]) -> Stream[Any]:
    return materialize("mat", s, pipeline="t")


def _materializer_sweep(s: Stream[Event]) -> Stream[Any]:
    return materialize("mat", s, pipeline="t", sweep=True, shards=3)


PATTERNS: dict[str, Callable[[Stream[Event]], Stream[Any]]] = {
    "dedup": _dedup,
    "dedup_sharded": _dedup_sharded,
    "dedup_per_key": _dedup_per_key,
    "merger": _merger,
    "sessions": _sessions,
    "sessions_per_key": _sessions_per_key,
    "materializer": _materializer,
    "materializer_sweep": _materializer_sweep,
}


@pytest.fixture(scope="module")
def uninterrupted() -> dict[str, dict[str, Any]]:
    return {name: by_id(run_pattern(body, workload())) for name, body in PATTERNS.items()}


def test_workload_exercises_every_kind_of_output(uninterrupted: dict[str, dict[str, Any]]) -> None:
    """Guard against a vacuous comparison: the workload produces each kind of record."""
    assert 0 < len(uninterrupted["dedup"]) < len(workload())
    assert uninterrupted["dedup_sharded"] == uninterrupted["dedup"] == uninterrupted["dedup_per_key"]
    assert uninterrupted["sessions"] == uninterrupted["sessions_per_key"]  # shards (default) = per key
    kinds = {c.kind for c in uninterrupted["merger"].values()}
    assert kinds == {"created", "updated", "deleted"}
    names = {type(x).__name__ for x in uninterrupted["sessions"].values()}
    assert names == {"Session", "LateEvent"}
    assert any(s.revision > 0 for s in uninterrupted["sessions"].values() if hasattr(s, "revision"))
    sweep_tombstones = [c for c in uninterrupted["materializer_sweep"].values()
                        if c.kind == "tombstone" and c.event_id.startswith("g1/")]
    assert sweep_tombstones  # keys c, d, e were not in generation 1


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_abort_and_resume_equals_uninterrupted(name: str, tmp_path: Path,
                                               uninterrupted: dict[str, dict[str, Any]]) -> None:
    # Abort in the middle, after the re-sync (index 45): resumed state must carry the sweep rows.
    combined = run_with_abort(PATTERNS[name], workload(), abort_at=45, tmp=tmp_path)
    assert by_id(combined) == uninterrupted[name]


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_two_workers_equal_one(name: str, uninterrupted: dict[str, dict[str, Any]]) -> None:
    out = run_pattern(PATTERNS[name], workload(), workers=2)
    assert len(out) == len(by_id(out))  # no duplicates without failures
    assert by_id(out) == uninterrupted[name]


def per_key_state(per_key: str, tmp_path: Path) -> tuple[Path, list[Any], list[Any]]:
    """A recovery directory holding the per-key pattern `per_key`'s state after an abort in
    the middle of the workload: (directory, the input with its abort, the output so far)."""
    rec = tmp_path / "recovery"
    rec.mkdir()
    init_db_dir(rec, 2)
    items: list[Any] = list(workload())
    items.insert(45, TestingSource.ABORT())
    out: list[Any] = []
    run_pattern(PATTERNS[per_key], items, recovery_dir=rec, out=out)
    return rec, items, out


@pytest.mark.parametrize(("per_key", "sharded", "step"), [
    ("dedup_per_key", "dedup", "patterns_test.dedup.dedup.stateful_batch"),
    ("sessions_per_key", "sessions", "patterns_test.sessions.sessions.stateful_batch"),
])
def test_per_key_checkpoint_re_keyed_into_shards_resumes_identically(
        per_key: str, sharded: str, step: str, tmp_path: Path,
        uninterrupted: dict[str, dict[str, Any]]) -> None:
    """State written with shards=None (before shards became the default), re-keyed by
    `shard_per_key_rows`, resumes in the sharded step: together the same output as one run."""
    rec, items, out = per_key_state(per_key, tmp_path)
    assert shard_per_key_rows(rec, step, 64) > 0
    assert shard_per_key_rows(rec, step, 64) == 0  # already sharded: nothing to do
    run_pattern(PATTERNS[sharded], items, recovery_dir=rec, out=out)
    assert by_id(out) == uninterrupted[sharded]
