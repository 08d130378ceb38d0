"""Which process of a Bytewax cluster holds which recovery partition.

StreamForge's rule (pure, deterministic from the two counts):

    owner(partition, processes) == partition % processes

so process K of N holds partitions K, K+N, K+2N, ... in its own recovery directory
(`<recovery.dir>/proc-K` for `streamforge run --processes N`; the pod's volume for one
pod per process). A partition count below the process count leaves the higher
processes without partitions (allowed: they run workers, hold no recovery state).

How Bytewax 0.21.1 itself decides (src/recovery.rs, src/timely.rs at tag v0.21.1):

- `RecoveryConfig::build` (src/recovery.rs) lists the process's local recovery
  directory and opens every `*.sqlite3` file; the partition index comes from the
  file's `parts` row (`PartitionMeta(index, count)`), not from its name. That map
  (`RecoveryBundle.part_paths`, "all known local partitions") is the process's
  `local_parts()`, identical for every worker of the process.
- Every partitioned recovery operator (`partd_load`, `partd_write`, `partd_commit`
  in src/timely.rs) broadcasts `(partition, worker)` for each local partition and
  `assign_primaries` (worker 0 collects them; `calc_primaries`) picks one primary
  worker per partition among the workers that know it: partitions known by the
  fewest workers first, each to the candidate with the fewest partitions so far,
  lowest worker index on ties. Only the primary reads and writes that partition.
- So *file presence decides*: a partition file present on one process only is
  written by that process's workers; present on two, one copy is chosen and the
  other silently goes stale (and both are read when the resume epoch is computed).
  Missing on every process fails the resume (`MissingPartitionsError`, "Missing
  recovery partitions ... can't resume"); none at all panics ("No partitions found
  on any worker"). `init_db_dir(dir, count)` (`python -m bytewax.recovery DIR N`)
  always creates all N `part-I.sqlite3` files in one directory.

Hence the cluster's invariant, which `owned` describes: every partition in exactly
one process directory, the one `owner` names. Bytewax's state routing is independent
of it (a state key's snapshot goes to partition `hash(step_id, key) % count`, written
by that partition's primary, wherever it lives), so any placement resumes the same
state; this one keeps it balanced and lets a process find its share without a
shared view of the others.
"""

from __future__ import annotations

__all__ = ["owned", "owner", "process_dir"]

from pathlib import Path


def owner(partition: int, processes: int) -> int:
    """The process id (0-based) whose recovery directory holds `partition`."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if partition < 0:
        raise ValueError(f"partition must be >= 0, got {partition}")
    return partition % processes


def owned(process_id: int, processes: int, partition_count: int) -> list[int]:
    """The partitions (ascending) that process `process_id` of `processes` holds, out of
    `partition_count`; empty when `process_id >= partition_count`."""
    if not 0 <= process_id < processes:
        raise ValueError(f"process id {process_id} is not in 0..{processes - 1}")
    return list(range(process_id, max(partition_count, 0), processes))


def process_dir(recovery_dir: Path, process_id: int) -> Path:
    """Process `process_id`'s own recovery directory under a local cluster's `recovery_dir`."""
    return recovery_dir / f"proc-{process_id}"
