"""A Bytewax worker thread keeps one Python thread state (`dataflows.flow.threads`).

On a cluster (`cluster_main`: several processes, or several workers in one), Bytewax runs
each worker on a Rust thread that enters Python per call; without a pinned thread state,
CPython builds and frees one per call, so a thread-local set in one batch is gone in the
next. StreamForge's sources pin it from `list_parts`: the counter below then climbs across
batches on each worker thread, as it does on the main thread of a single worker.
"""

from __future__ import annotations

import threading
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, cluster_main

from dataflows.connectors.files import JsonlSource
from dataflows.flow.threads import pin_thread_state

_calls = threading.local()


def _count(_rec: object) -> tuple[int, int]:
    """(this thread's ident, how many calls this thread-local has seen before this one)."""
    n = getattr(_calls, "n", 0)
    _calls.n = n + 1
    return threading.get_ident(), n


def test_a_worker_thread_keeps_its_thread_locals_across_batches(tmp_path: Path) -> None:
    lines = 40
    (tmp_path / "in.jsonl").write_text("".join(f'{{"i": {i}}}\n' for i in range(lines)))
    out: list[tuple[int, int]] = []
    flow = Dataflow("thread_state")
    recs = op.input("in", flow, JsonlSource(tmp_path / "in.jsonl", batch_size=1))  # one batch per line
    op.output("out", op.map("count", recs, _count), TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=2)  # two worker threads in this process
    assert len(out) == lines
    by_thread: dict[int, list[int]] = {}
    for ident, n in out:
        by_thread.setdefault(ident, []).append(n)
    for counts in by_thread.values():
        # every batch is its own call into Python; the thread-local survives between them
        assert sorted(counts) == list(range(len(counts))), counts


def test_pinning_is_once_per_thread_and_never_on_the_main_thread() -> None:
    assert pin_thread_state() is False  # the main thread's state is Python's own
    results: list[bool] = []

    def twice() -> None:
        results.extend([pin_thread_state(), pin_thread_state()])

    t = threading.Thread(target=twice)
    t.start()
    t.join()
    assert results == [True, False]
