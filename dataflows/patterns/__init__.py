"""StreamForge's stateful patterns: pure per-key state machines (no Bytewax import here).

| pattern | logic (this package) | operator (`dataflows.flow`) |
|---|---|---|
| dedup | `Deduplicator` (one identity, a shard's, a key's) | `deduplicate`, `dedup_by_key` |
| merger | `StatefulMerger` -> `Change` | `merge_changes` |
| sessions | `SessionAnalyzer` -> `Session`, `SessionRetraction`, `LateEvent`; `SessionShard` (a shard's keys) | `analyze_sessions` |
| materializer | `Materializer`, `ShardMaterializer` -> `TableChange` | `materialize` |
| lanes | `OrdersLane`, `SessionsLane` (the above, fused per key) | `orders_lane`, `sessions_lane` |

Every logic is a Bytewax `StatefulBatchLogic` by shape (`on_batch`,
`on_notify`, `on_eof`, `notify_at`, `snapshot`); `on_item` is one event of
`on_batch`. The operators are importable from here too (loaded on first use).
"""

from typing import Any

from dataflows.patterns.dedup import Deduplicator, DedupState, ShardDedupState
from dataflows.patterns.diff import changed_paths
from dataflows.patterns.lane import OrdersLane, OrdersLaneState, SessionsLane, SessionsLaneState
from dataflows.patterns.materializer import (
    MaterializedRow,
    Materializer,
    ShardMaterializer,
    ShardState,
    TableChange,
)
from dataflows.patterns.merger import Change, MergerState, StatefulMerger
from dataflows.patterns.session_shard import SessionShard, SessionShardState
from dataflows.patterns.sessions import (
    LateEvent,
    Session,
    SessionAnalyzer,
    SessionRetraction,
    SessionState,
)

_OPERATORS = ("analyze_sessions", "deduplicate", "materialize", "merge_changes", "SessionOutputs")

__all__ = [
    "Change",
    "DedupState",
    "Deduplicator",
    "LateEvent",
    "MaterializedRow",
    "Materializer",
    "MergerState",
    "OrdersLane",
    "OrdersLaneState",
    "Session",
    "SessionAnalyzer",
    "SessionShard",
    "SessionShardState",
    "SessionOutputs",
    "SessionRetraction",
    "SessionState",
    "SessionsLane",
    "SessionsLaneState",
    "ShardDedupState",
    "ShardMaterializer",
    "ShardState",
    "StatefulMerger",
    "TableChange",
    "analyze_sessions",
    "changed_paths",
    "deduplicate",
    "materialize",
    "merge_changes",
]


def __getattr__(name: str) -> Any:
    """The Bytewax operators, from `dataflows.flow` (imported on first use)."""
    if name in _OPERATORS:
        import dataflows.flow

        return getattr(dataflows.flow, name)
    raise AttributeError(name)
