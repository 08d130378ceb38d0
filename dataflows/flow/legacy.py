"""State written before the keyed lanes (issue 11), fused into the lanes' state.

Before issue 11 the orders pipeline kept three stateful steps keyed by the
order (`<flow>.dedup.stateful_batch`, `<flow>.materialize.materialize.stateful_batch`,
`<flow>.merge.merge.stateful_batch`) and the sessions pipeline two
(`<flow>.dedup.stateful_batch`, `<flow>.sessions.sessions.stateful_batch`); the
lanes keep one (`<flow>.lane.lane.stateful_batch`, `OrdersLaneState` /
`SessionsLaneState`). Merging rows of several steps is not a rename
(`state.step-renames` refuses it), so `fuse_legacy_steps(dir)` rewrites a
recovery directory, flow stopped (as `recovery.migrate.migrate_dir`):

- for every flow id whose old steps it finds (`<flow>.materialize.materialize`
  makes an orders flow, `<flow>.sessions.sessions` a sessions flow), per key
  and per snapshot epoch E of any of its old rows, the lane row at E fuses
  what Bytewax would have loaded at E from each old step (its newest row at
  or below E; a NULL row is a discarded key); a key with nothing left at E
  gets a NULL row;
- the old rows are deleted; a flow that already has lane rows is left alone,
  and so is an orders flow with `patterns.materializer.sweep: true` (its
  materializer state is per shard: it keeps its separate steps).

Rows are read from every partition; a key's lane row goes to the partition
that held its newest old row. The module paths pickled in the old state are
still importable (`dataflows.patterns.dedup_shards`,
`dataflows.pipelines.common.LaneDedupState`, the pattern modules).

    fuse_legacy_steps(Path("recovery/orders"))  # -> number of lane rows written

`shard_per_key_rows(dir, step_id, shards)` re-keys the rows of a
`deduplicate` / `analyze_sessions` step written with `shards=None` (a
`DedupState` / `SessionState` per identity or key; the default before
`shards` was) into the rows of `shards` shards (`ShardDedupState` /
`SessionShardState`, keys routed by `shard_of` like the operators route
events): per shard and per snapshot epoch E of any of its keys' rows, the
shard row at E holds what Bytewax would have loaded at E for each of its
keys. Flow stopped; the same `shards` the flow is built with.

    shard_per_key_rows(Path("recovery/clicks"), "clicks.sessions.sessions.stateful_batch", 64)
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataflows.patterns.dedup import (
    Deduplicator,
    DedupState,
    ShardDedupState,
    restore_seen,
    shard_of,
)
from dataflows.patterns.lane import orders_state_from_steps, sessions_state_from_steps
from dataflows.patterns.session_shard import SessionShard, SessionShardState
from dataflows.patterns.sessions import SessionState
from recovery.partitions import connect, partition_files

__all__ = ["LANE_STEP", "fuse_legacy_steps", "legacy_lane_steps", "shard_per_key_rows"]

LANE_STEP = "{flow}.lane.lane.stateful_batch"
_KINDS: dict[str, tuple[tuple[str, ...], Callable[..., Any]]] = {
    # kind: (old step ids in the order the fuse function takes their states, fuse)
    "orders": (("{flow}.dedup.stateful_batch", "{flow}.materialize.materialize.stateful_batch",
                "{flow}.merge.merge.stateful_batch"), orders_state_from_steps),
    "sessions": (("{flow}.dedup.stateful_batch", "{flow}.sessions.sessions.stateful_batch"),
                 sessions_state_from_steps),
}
_MARKERS = {re.compile(r"^(?P<flow>.+)\.materialize\.materialize\.stateful_batch$"): "orders",
            re.compile(r"^(?P<flow>.+)\.sessions\.sessions\.stateful_batch$"): "sessions"}


@dataclass(frozen=True)
class _Row:
    part: Path
    epoch: int
    blob: bytes | None


def legacy_lane_steps(step_ids: set[str]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """`{flow id: (kind, old step ids)}` of the pre-lane flows whose state `step_ids` hold."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for step in step_ids:
        for pattern, kind in _MARKERS.items():
            m = pattern.match(step)
            if m and LANE_STEP.format(flow=m["flow"]) not in step_ids:
                found[m["flow"]] = (kind, tuple(s.format(flow=m["flow"]) for s in _KINDS[kind][0]))
    return found


def _state_at(rows: list[_Row], epoch: int) -> Any:
    best: _Row | None = None
    for row in rows:
        if row.epoch <= epoch and (best is None or row.epoch > best.epoch):
            best = row
    return None if best is None or best.blob is None else pickle.loads(best.blob)


def _swept(rows: dict[str, list[list[_Row]]]) -> bool:
    """Whether an orders flow's materialize rows are per shard (`sweep: true`, not a lane)."""
    from dataflows.patterns.materializer import ShardState

    for per_step in rows.values():
        for row in per_step[1]:
            if row.blob is not None:
                return isinstance(pickle.loads(row.blob), ShardState)
    return False


def fuse_legacy_steps(recovery_dir: Path) -> int:
    """Fuse the pre-lane steps' rows into lane rows (module docstring); lane rows written."""
    parts = partition_files(Path(recovery_dir))
    present: set[str] = set()
    for path in parts:
        conn = connect(path, readonly=True)
        try:
            present.update(r[0] for r in conn.execute("SELECT DISTINCT step_id FROM snaps"))
        finally:
            conn.close()
    written = 0
    for flow_id, (kind, steps) in sorted(legacy_lane_steps(present).items()):
        # rows[key][i]: the rows of old step i for the key
        rows: dict[str, list[list[_Row]]] = {}
        for path in parts:
            conn = connect(path, readonly=True)
            try:
                for i, step in enumerate(steps):
                    for key, epoch, blob in conn.execute(
                            "SELECT state_key, snap_epoch, ser_change FROM snaps WHERE step_id = ?", (step,)):
                        rows.setdefault(key, [[] for _ in steps])[i].append(_Row(path, epoch, blob))
            finally:
                conn.close()
        if kind == "orders" and _swept(rows):
            continue  # the sweep materializer (state per shard) still runs as its own step
        fuse = _KINDS[kind][1]
        lane = LANE_STEP.format(flow=flow_id)
        inserts: dict[Path, list[tuple[str, str, int, bytes | None]]] = {p: [] for p in parts}
        for key, per_step in rows.items():
            newest = max((r for rs in per_step for r in rs), key=lambda r: r.epoch)
            for epoch in sorted({r.epoch for rs in per_step for r in rs}):
                state = fuse(*(_state_at(rs, epoch) for rs in per_step))
                blob = None if state is None else pickle.dumps(state)
                inserts[newest.part].append((lane, key, epoch, blob))
        for path in parts:
            conn = connect(path)
            try:
                with conn:
                    conn.executemany("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
                                     "VALUES (?, ?, ?, ?)", inserts[path])
                    for step in steps:
                        conn.execute("DELETE FROM snaps WHERE step_id = ?", (step,))
            finally:
                conn.close()
            written += len(inserts[path])
    return written


def _dedup_shard(states: dict[str, DedupState]) -> ShardDedupState:
    """The shard state of per-identity `DedupState`s (oldest sighting first)."""
    pairs, clocks = [], []
    for ident, state in states.items():
        seen, clock_ms = restore_seen(state)
        anchor, last = seen[""]
        pairs.append((last, ident, anchor))
        if clock_ms is not None:
            clocks.append(clock_ms)
    return ShardDedupState({i: (a, last) for last, i, a in sorted(pairs)}, Deduplicator.STATE_VERSION,
                           max(clocks, default=None))


def _sessions_shard(states: dict[str, SessionState]) -> SessionShardState:
    """The shard state of per-key `SessionState`s (snapshot time: the newest of theirs)."""
    clocks = [s.clock_ms if s.clock_ms is not None else s.wall_ms for s in states.values()]
    keys = {k: (s.key, s.spans, s.watermark_ms, s.wall_ms) for k, s in sorted(states.items())}
    return SessionShardState(keys, max(clocks, default=None), SessionShard.STATE_VERSION)


_PER_KEY: dict[type, Callable[[dict[str, Any]], Any]] = {DedupState: _dedup_shard,
                                                         SessionState: _sessions_shard}


def _step_rows(parts: list[Path], step_id: str) -> dict[str, list[_Row]]:
    rows: dict[str, list[_Row]] = {}
    for path in parts:
        conn = connect(path, readonly=True)
        try:
            for key, epoch, blob in conn.execute(
                    "SELECT state_key, snap_epoch, ser_change FROM snaps WHERE step_id = ?", (step_id,)):
                rows.setdefault(key, []).append(_Row(path, epoch, blob))
        finally:
            conn.close()
    return rows


def shard_per_key_rows(recovery_dir: Path, step_id: str, shards: int) -> int:
    """Re-key `step_id`'s per-key rows into `shards` shard rows (module docstring); rows written.

    0 when the step holds no per-key state (already sharded, or absent).
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    parts = partition_files(Path(recovery_dir))
    rows = _step_rows(parts, step_id)
    kinds = {type(pickle.loads(r.blob)) for rs in rows.values() for r in rs if r.blob is not None}
    per_key = kinds & set(_PER_KEY)
    if not per_key:
        return 0
    if len(kinds) > 1:
        raise ValueError(f"step {step_id!r} mixes state types {sorted(k.__name__ for k in kinds)}")
    fuse = _PER_KEY[per_key.pop()]
    groups: dict[str, list[str]] = {}
    for key in rows:
        groups.setdefault(str(shard_of(key, shards)), []).append(key)
    inserts: dict[Path, list[tuple[str, str, int, bytes | None]]] = {p: [] for p in parts}
    for shard, keys in groups.items():
        newest = max((r for k in keys for r in rows[k]), key=lambda r: r.epoch)
        for epoch in sorted({r.epoch for k in keys for r in rows[k]}):
            states = {k: s for k in keys if (s := _state_at(rows[k], epoch)) is not None}
            blob = pickle.dumps(fuse(states)) if states else None
            inserts[newest.part].append((step_id, shard, epoch, blob))
    for path in parts:
        conn = connect(path)
        try:
            with conn:
                conn.execute("DELETE FROM snaps WHERE step_id = ?", (step_id,))
                conn.executemany("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
                                 "VALUES (?, ?, ?, ?)", inserts[path])
        finally:
            conn.close()
    return sum(len(v) for v in inserts.values())
