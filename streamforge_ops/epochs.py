"""Epoch alignment and snapshot-write time, as seen by the supervisor.

Bytewax's epoch is a global barrier: an epoch closes (and its state is
snapshotted into the recovery partitions) only when every worker has finished
it, so slow operators, backpressure or a slow disk show up as epochs that take
longer than `recovery.snapshot-interval` to close. Bytewax 0.21.1 has no
metric for the epoch itself; its own histograms (src/timely.rs, src/inputs.rs,
src/operators.rs, src/outputs.rs) are `partd_write_duration_seconds`
{worker_id, part_id} (writing the snapshots of an epoch into the recovery
partitions) and `snapshot_duration_seconds` {step_id, worker_index} (each
step's `snapshot()` call), served on the dataflow API's /metrics when
`BYTEWAX_DATAFLOW_API_ENABLED` is set, with the exporter's `bytewax_` prefix
(`bytewax_partd_write_duration_seconds_sum`, ...).

`EpochWatch.poll()` (every supervisor tick, at most every `POLL_S`):

- reads the cluster frontier (lowest `worker_frontier` of the newest
  execution in the partitions' `fronts` table, read-only); when it advanced
  by n epochs since the previous advance, each of those epochs took
  (elapsed / n) to close: `streamforge_epoch_close_seconds` (histogram);
- scrapes the child's /metrics (when the dataflow API is enabled) and sets
  `streamforge_last_snapshot_write_seconds` to the mean duration of the
  `partd_write_duration_seconds` observations since the previous scrape.

A restart starts a new execution at the resume epoch: the frontier goes
back, which only re-bases the measurement.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from dataflows import metrics

__all__ = ["EpochWatch", "cluster_frontier", "partd_write_totals"]

POLL_S = 0.25
SCRAPE_TIMEOUT_S = 1.0
_MAX_OBSERVED = 1000  # epochs observed per advance at most (a long outage is one long gap)


def cluster_frontier(recovery_dir: Path) -> int | None:
    """The lowest worker frontier of the newest execution over all partitions (None if none)."""
    best: tuple[int, int] | None = None  # (ex_num, min frontier)
    for part in sorted(Path(recovery_dir).glob("part-*.sqlite3")):
        try:
            with sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=0.5) as conn:
                rows = conn.execute("SELECT ex_num, MIN(worker_frontier) FROM fronts GROUP BY ex_num").fetchall()
        except sqlite3.Error:
            continue  # busy or being swapped: the next poll reads it
        for ex, front in rows:
            if best is None or ex > best[0] or (ex == best[0] and front < best[1]):
                best = (int(ex), int(front))
    return None if best is None else best[1]


def partd_write_totals(text: str) -> tuple[float, float]:
    """(sum, count) of Bytewax's `[bytewax_]partd_write_duration_seconds` over all its label sets."""
    from prometheus_client.parser import text_string_to_metric_families

    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = s.name.removeprefix("bytewax_")
            if name == "partd_write_duration_seconds_sum":
                total += s.value
            elif name == "partd_write_duration_seconds_count":
                count += s.value
    return total, count


def _dataflow_api_url() -> str | None:
    if os.environ.get("BYTEWAX_DATAFLOW_API_ENABLED", "").lower() not in ("1", "true", "yes"):
        return None
    return f"http://127.0.0.1:{os.environ.get('BYTEWAX_DATAFLOW_API_PORT', '3030')}/metrics"


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as resp:
            return str(resp.read().decode())
    except (OSError, ValueError):
        return None  # the child is starting or gone: next time


class EpochWatch:
    """Measures epoch close times and the last snapshot write of one job (see module doc)."""

    def __init__(self, recovery_dir: Path, pipeline: str, *,
                 clock: Callable[[], float] = time.monotonic, scrape_url: str | None = None) -> None:
        self.recovery_dir, self.pipeline, self._clock = Path(recovery_dir), pipeline, clock
        self._url = scrape_url if scrape_url is not None else _dataflow_api_url()
        self._polled = -POLL_S
        self._front: tuple[int, float] | None = None
        self._writes: tuple[float, float] | None = None

    def poll(self) -> None:
        now = self._clock()
        if now - self._polled < POLL_S:
            return
        self._polled = now
        self._epochs(now)
        if self._url:
            self._snapshot_write()

    def _epochs(self, now: float) -> None:
        front = cluster_frontier(self.recovery_dir)
        if front is None:
            return
        if self._front is not None and front > self._front[0]:
            n = front - self._front[0]
            each = (now - self._front[1]) / n
            hist = metrics.EPOCH_CLOSE.labels(pipeline=self.pipeline)
            for _ in range(min(n, _MAX_OBSERVED)):
                hist.observe(each)
        if self._front is None or front != self._front[0]:
            self._front = (front, now)

    def _snapshot_write(self) -> None:
        assert self._url is not None
        text = _scrape(self._url)
        if text is None:
            return
        total, count = partd_write_totals(text)
        if self._writes is not None and count > self._writes[1]:
            metrics.LAST_SNAPSHOT_WRITE.labels(pipeline=self.pipeline).set(
                (total - self._writes[0]) / (count - self._writes[1]))
        if self._writes is None or count != self._writes[1]:
            self._writes = (total, count)
