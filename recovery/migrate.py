"""State schema migrations: rewrite pickled state in a recovery directory.

A migration is registered for a step id prefix and a version step
(``from_version -> to_version``) with a function ``old_state -> new_state``.
`migrate_dir` unpickles every non-NULL ``snaps`` row of matching steps, reads
its version, applies registered migrations until none applies, and re-pickles
the rows that changed, one transaction per partition. Run it with the flow
stopped (after a restore, before the run), with the old and new state
classes importable.

Version of a state: an instance-level ``version`` (attribute, dataclass field
or dict key ``"version"``); state without one is version 1. (A class-level
``STATE_VERSION`` describes the *code*, not the pickled object, so it is
deliberately not read here.)
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recovery.partitions import connect, partition_files

__all__ = [
    "MigrationError",
    "clear_migrations",
    "migrate_dir",
    "register_migration",
    "state_version",
    "upgrade_state",
]

Migration = Callable[[Any], Any]
_REGISTRY: dict[tuple[str, int], tuple[int, Migration]] = {}


class MigrationError(Exception):
    """A state row could not be migrated."""


def register_migration(step_prefix: str, from_version: int, to_version: int, fn: Migration) -> None:
    """Register `fn` to upgrade state of steps starting with `step_prefix`."""
    if to_version <= from_version:
        raise ValueError("a migration must raise the version")
    _REGISTRY[(step_prefix, from_version)] = (to_version, fn)


def clear_migrations() -> None:
    _REGISTRY.clear()


def state_version(state: Any) -> int:
    """The instance-level version of a state object (1 if it has none)."""
    if isinstance(state, dict):
        return int(state.get("version", 1))
    inst = getattr(state, "__dict__", None)
    if inst is not None and "version" in inst:
        return int(inst["version"])
    slots = getattr(type(state), "__slots__", ())
    if "version" in slots and hasattr(state, "version"):
        return int(state.version)
    return 1


def upgrade_state(step_id: str, state: Any) -> tuple[Any, bool]:
    """`state` after every registered migration of `step_id` that applies; (state, changed)."""
    changed = False
    for _ in range(100):
        version = state_version(state)
        step = next(
            (
                m
                for (prefix, v), m in _REGISTRY.items()
                if v == version and step_id.startswith(prefix)
            ),
            None,
        )
        if step is None:
            return state, changed
        to_version, fn = step
        state = fn(state)
        if state_version(state) != to_version:
            raise MigrationError(
                f"{step_id}: migration {version}->{to_version} returned version {state_version(state)}"
            )
        changed = True
    raise MigrationError(f"{step_id}: migrations loop")


def migrate_dir(recovery_dir: Path) -> int:
    """Apply registered migrations to every partition; returns rows rewritten."""
    prefixes = {prefix for prefix, _ in _REGISTRY}
    if not prefixes:
        return 0
    rewritten = 0
    for path in partition_files(Path(recovery_dir)):
        conn = connect(path)
        try:
            with conn:
                rows = conn.execute(
                    "SELECT step_id, state_key, snap_epoch, ser_change FROM snaps "
                    "WHERE ser_change IS NOT NULL"
                ).fetchall()
                for step_id, key, epoch, blob in rows:
                    if not any(step_id.startswith(p) for p in prefixes):
                        continue
                    try:
                        state = pickle.loads(blob)
                    except Exception as exc:
                        raise MigrationError(
                            f"{path.name}: {step_id}/{key}@{epoch}: cannot unpickle: {exc}"
                        ) from None
                    new, changed = upgrade_state(step_id, state)
                    if changed:
                        conn.execute(
                            "UPDATE snaps SET ser_change = ? WHERE step_id = ? AND state_key = ? "
                            "AND snap_epoch = ?",
                            (pickle.dumps(new), step_id, key, epoch),
                        )
                        rewritten += 1
        finally:
            conn.close()
    return rewritten
