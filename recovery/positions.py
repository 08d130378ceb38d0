"""Read source positions and state sizes out of (sealed copies of) partitions.

Heuristic for "source positions": Bytewax runs every stateful operator
(``stateful_map``, ``stateful_flat_map``, windows, joins, ...) through
``stateful_batch``, so those step ids end with ``.stateful_batch`` and their
state keys are data keys. Every other step with snapshots is a partitioned
input or output (``FixedPartitionedSource`` / ``FixedPartitionedSink``) whose
state keys are partition keys (``topic-0``, a file path, a Mongo namespace,
``iterable``) and whose state is the resume position: a Kafka offset, a file
byte offset, a Mongo resume token, the committed end of a transactional sink.
Those states are unpickled and made JSON-able (bytes -> hex, dataclasses ->
dicts, unknown objects -> repr). Steps with more than `MAX_KEYS` keys are
left out (they are not partition-keyed). Unpickling runs code from the
state, which here is our own local recovery directory.
"""

from __future__ import annotations

import dataclasses
import datetime
import pickle
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_KEYS",
    "PositionRows",
    "is_operator_step",
    "jsonable",
    "source_positions",
    "state_bytes_by_step",
]

MAX_KEYS = 4096


def is_operator_step(step_id: str) -> bool:
    """True for stateful operators (data-keyed), False for inputs/outputs."""
    return step_id.rsplit(".", 1)[-1] == "stateful_batch"


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-able rendering of an unpickled position."""
    if depth > 8:
        return repr(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray):
        return {"hex": bytes(value).hex()}
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: jsonable(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v, depth + 1) for v in value]
    if hasattr(value, "__dict__"):
        return {
            "type": type(value).__name__,
            **{k: jsonable(v, depth + 1) for k, v in vars(value).items()},
        }
    return repr(value)


def _decode(blob: bytes) -> Any:
    try:
        return jsonable(pickle.loads(blob))
    except Exception as exc:  # a class not importable here, a corrupt blob
        return {"undecodable": f"{type(exc).__name__}: {exc}", "bytes": len(blob)}


class PositionRows:
    """The raw rows `source_positions` reads, gathered partition by partition (`add`), then
    decoded once (`positions`)."""

    def __init__(self, input_steps: Iterable[str] | None = None) -> None:
        self.wanted = list(input_steps) if input_steps is not None else None
        self.counts: dict[str, int] = {}
        self.rows: dict[str, dict[str, bytes]] = {}

    def add(self, conn: sqlite3.Connection, table: str = "snaps") -> None:
        """Read one partition's (or delta's) rows of `table` through `conn`: only the rows
        of input/output steps (`is_operator_step` False). On a partition's ``snaps`` (its
        primary key starts with the step id) the step ids are found by one index seek
        each and only those steps' rows are read: never the operators' data rows."""
        for step_id in _step_ids(conn, table):
            if is_operator_step(step_id):
                continue
            n = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE step_id = ?",
                             (step_id,)).fetchone()[0]
            self.counts[step_id] = self.counts.get(step_id, 0) + n
            if self.wanted is not None and not any(step_id.endswith(w) for w in self.wanted):
                continue
            for key, blob in conn.execute(
                f"SELECT state_key, ser_change FROM {table} WHERE step_id = ? "
                "AND ser_change IS NOT NULL ORDER BY state_key", (step_id,)
            ):
                self.rows.setdefault(step_id, {})[key] = blob

    def merge(self, other: PositionRows) -> None:
        """Add the rows `other` gathered (partitions read apart, in other threads)."""
        for step_id, n in other.counts.items():
            self.counts[step_id] = self.counts.get(step_id, 0) + n
        for step_id, keys in other.rows.items():
            self.rows.setdefault(step_id, {}).update(keys)

    def positions(self) -> dict[str, Any]:
        """``{step_id: {partition_key: position}}`` of every partition added."""
        return {
            step: {key: _decode(blob) for key, blob in keys.items()}
            for step, keys in sorted(self.rows.items())
            if self.wanted is not None or self.counts.get(step, 0) <= MAX_KEYS
        }


def _step_ids(conn: sqlite3.Connection, table: str) -> list[str]:
    """The distinct step ids of `table`, in order, one ``MIN(step_id) > previous`` each."""
    ids: list[str] = []
    row = conn.execute(f"SELECT MIN(step_id) FROM {table}").fetchone()
    while row[0] is not None:
        ids.append(row[0])
        row = conn.execute(f"SELECT MIN(step_id) FROM {table} WHERE step_id > ?",
                           (ids[-1],)).fetchone()
    return ids


def source_positions(
    paths: Iterable[Path], input_steps: Iterable[str] | None = None
) -> dict[str, Any]:
    """``{step_id: {partition_key: position}}`` over the partitions in `paths`.

    `input_steps` (step ids or id suffixes such as ``.inp``) overrides the
    heuristic of the module docstring.
    """
    rows = PositionRows(input_steps)
    for path in paths:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows.add(conn)
        finally:
            conn.close()
    return rows.positions()


def state_bytes_by_step(paths: Iterable[Path]) -> dict[str, int]:
    """Total pickled state bytes per step id over the partitions in `paths`."""
    total: dict[str, int] = {}
    for path in paths:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for step_id, n in conn.execute(
                "SELECT step_id, COALESCE(SUM(LENGTH(ser_change)), 0) FROM snaps GROUP BY step_id"
            ):
                total[step_id] = total.get(step_id, 0) + int(n)
        finally:
            conn.close()
    return dict(sorted(total.items()))
