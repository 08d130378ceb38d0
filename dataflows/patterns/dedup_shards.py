"""Former home of the sharded dedup (before issue 11): kept so pickled state and imports resolve.

The one Deduplicator is `dataflows.patterns.dedup.Deduplicator` (with
`identity=`, several identities per Bytewax key); `ShardDedupState` pickles
record this module's path.
"""

from dataflows.patterns.dedup import ShardDedupState, shard_router

__all__ = ["ShardDedupState", "shard_router"]
