"""StreamForge's stateful patterns: pure per-key state machines plus thin Bytewax wiring.

| pattern | wiring | logic |
|---|---|---|
| dedup | `deduplicate` | `Deduplicator`, `ShardDeduplicator` (`shards=N`) |
| merger | `merge_changes` -> `Change` | `StatefulMerger` |
| sessions | `analyze_sessions` -> `Session`, `LateEvent` | `SessionAnalyzer` |
| materializer | `materialize` -> `TableChange` | `Materializer`, `ShardMaterializer` |
"""

from dataflows.patterns.dedup import Deduplicator, DedupState, deduplicate
from dataflows.patterns.dedup_shards import ShardDeduplicator, ShardDedupState
from dataflows.patterns.diff import changed_paths
from dataflows.patterns.materializer import (
    MaterializedRow,
    Materializer,
    ShardMaterializer,
    ShardState,
    TableChange,
    materialize,
)
from dataflows.patterns.merger import Change, MergerState, StatefulMerger, merge_changes
from dataflows.patterns.sessions import (
    LateEvent,
    Session,
    SessionAnalyzer,
    SessionOutputs,
    SessionState,
    analyze_sessions,
)

__all__ = [
    "Change",
    "DedupState",
    "Deduplicator",
    "LateEvent",
    "MaterializedRow",
    "Materializer",
    "MergerState",
    "Session",
    "SessionAnalyzer",
    "SessionOutputs",
    "SessionState",
    "ShardDedupState",
    "ShardDeduplicator",
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
