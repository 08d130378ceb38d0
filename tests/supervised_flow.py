"""A tiny stateful pipeline for the supervisor, upgrade and rescale tests.

Input: a JSONL file of `{"id": int, "user": str, "amount": int}` lines.
Output (Bytewax `FileSink`, truncated to the snapshotted offset on resume, so
the output is exactly-once): one JSON line per input line with the running
`count` and `total` of its user. `flow_v2` is "version 2" of the code: the same
step ids (so its state carries over) and one added field, `avg`.

Configured by the YAML file named by `$STREAMFORGE_CONFIG`:
`source.path`, `sink.path`, `source.tail` (keep polling the file for new lines
instead of finishing at its end), `source.delay` (seconds between batches, so
tests can act while the flow runs) and `source.batch-size`. Each output row
carries `$SF_TEST_TAG`, so a test can tell which run wrote it (a restart from
scratch would rewrite every row with the new tag).

Failure knobs for the supervisor tests: a `source.path` that does not exist is a
`ConfigError` raised while the flow is built (like the real pipelines' "no file
matches"); `source.crash: true` makes the source raise when Bytewax builds its
partition, i.e. after the flow started (a crash, not a config error).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.connectors.files import FileSink
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.config import Config, ConfigError, load_config


@dataclass
class Totals:
    """Per-user state: how many records and their sum."""

    count: int = 0
    total: int = 0


class _LinesPartition(StatefulSourcePartition[dict[str, Any], int]):
    """Emits parsed lines; keeps the number of lines consumed as its state."""

    def __init__(self, path: Path, resume: int | None, tail: bool, delay: float, batch: int):
        self._path, self._tail, self._delay, self._batch = path, tail, delay, batch
        self._done = 0 if resume is None else resume
        self._awake: datetime | None = None

    def next_batch(self) -> list[dict[str, Any]]:
        lines = self._path.read_text().splitlines() if self._path.exists() else []
        todo = lines[self._done : self._done + self._batch]
        if not todo and not self._tail:
            raise StopIteration()
        self._done += len(todo)
        self._awake = datetime.now(UTC) + timedelta(seconds=self._delay)
        return [json.loads(line) for line in todo]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._done


class LinesSource(FixedPartitionedSource[dict[str, Any], int]):
    """One partition reading a JSONL file from the line after its state."""

    def __init__(self, path: Path, *, tail: bool, delay: float, batch: int, crash: bool = False) -> None:
        self._args = (path, tail, delay, batch)
        self._crash = crash

    def list_parts(self) -> list[str]:
        return ["lines"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _LinesPartition:
        if self._crash:
            raise RuntimeError("source.crash: crashing as configured")
        path, tail, delay, batch = self._args
        return _LinesPartition(path, resume_state, tail, delay, batch)


def _accumulate(state: Totals | None, rec: dict[str, Any]) -> tuple[Totals, dict[str, Any]]:
    totals = state or Totals()
    totals.count += 1
    totals.total += int(rec["amount"])
    return totals, {**rec, "count": totals.count, "total": totals.total}


def build(cfg: Config, *, version: int) -> Dataflow:
    """The flow; `version` 2 adds the `avg` field."""
    src = cfg.section("source")
    if not Path(src.str("path")).exists():
        raise ConfigError(f"source.path: {src.str('path')} does not exist (in {cfg.origin})")
    flow = Dataflow("supervised")
    recs = op.input(
        "inp",
        flow,
        LinesSource(
            Path(src.str("path")),
            tail=src.bool("tail", False),
            delay=src.duration("delay", 0.0),
            batch=src.int("batch-size", 5, minimum=1),
            crash=src.bool("crash", False),
        ),
    )
    keyed = op.key_on("by_user", recs, lambda r: str(r["user"]))
    summed = op.stateful_map("totals", keyed, _accumulate)
    out = op.map("fmt", summed, lambda kv: ("out", _render(kv[1], version)))
    op.output("out", out, FileSink(Path(cfg.str("sink.path"))))
    return flow


def _render(row: dict[str, Any], version: int) -> str:
    row = {**row, "version": version, "tag": os.environ.get("SF_TEST_TAG", "")}
    if version >= 2:
        row["avg"] = row["total"] / row["count"]
    return json.dumps(row, sort_keys=True)


def flow() -> Dataflow:
    return build(load_config(), version=1)


def flow_v2() -> Dataflow:
    return build(load_config(), version=2)
