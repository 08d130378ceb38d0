"""Savepoints: create / list / describe / delete, prune rules, untouched by retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from recovery.checkpoint import apply_retention, list_checkpoints, take_checkpoint
from recovery.manifest import ManifestError
from recovery.partitions import init_partitions
from recovery.savepoint import (
    create_savepoint,
    delete_savepoint,
    describe,
    list_savepoints,
    prune_savepoints,
)
from recovery.store import open_store
from tests.test_recovery_support import counting_flow, run, segments

PIPE = "orders"


@pytest.fixture
def env(tmp_path: Path):
    rd = tmp_path / "rec"
    init_partitions(rd, 2)
    run(counting_flow(segments([["k", 40, 20, 1]]), []), rd)
    return rd, open_store(f"file://{tmp_path}/store")


def test_create_list_describe_delete(env) -> None:
    rd, store = env
    a = create_savepoint(rd, store, pipeline=PIPE, name="before-upgrade", code_version="1")
    b = create_savepoint(rd, store, pipeline=PIPE)
    assert [m.id for m in list_savepoints(store, PIPE)] == [b.id, a.id]
    d = describe(store, PIPE, "before-upgrade")
    assert (d.id, d.kind, d.code_version, d.incremental) == (a.id, "savepoint", "1", False)
    summary = d.describe()
    assert summary["source_positions"] == {"count.inp": {"iterable": 40}}
    assert summary["partition_count"] == 2 and summary["total_bytes"] > 0
    delete_savepoint(store, PIPE, a.id)
    assert [m.id for m in list_savepoints(store, PIPE)] == [b.id]
    assert store.list(f"{PIPE}/savepoints/{a.id}/") == []
    with pytest.raises(ManifestError, match="no savepoint"):
        describe(store, PIPE, a.id)


def test_checkpoint_retention_never_touches_savepoints(env) -> None:
    rd, store = env
    sp = create_savepoint(rd, store, pipeline=PIPE, name="keep")
    for _ in range(3):
        take_checkpoint(rd, store, pipeline=PIPE)
    assert len(apply_retention(store, PIPE, retained=1)) == 2
    assert len(list_checkpoints(store, PIPE)) == 1
    assert [m.id for m in list_savepoints(store, PIPE)] == [sp.id]


def test_prune_by_count_and_age_keeps_at_least_one(env) -> None:
    rd, store = env
    ids = [create_savepoint(rd, store, pipeline=PIPE).id for _ in range(4)]  # oldest first
    assert sorted(prune_savepoints(store, PIPE, max_count=2)) == sorted(ids[:2])
    assert [m.id for m in list_savepoints(store, PIPE)] == [ids[3], ids[2]]
    later = datetime.now(UTC) + timedelta(days=30)
    assert prune_savepoints(store, PIPE, max_age_s=7 * 86400, now=later) == [ids[2]]
    assert [m.id for m in list_savepoints(store, PIPE)] == [ids[3]]  # never below one
    assert prune_savepoints(store, PIPE, max_age_s=1, max_count=0, now=later) == []
    assert prune_savepoints(store, PIPE, max_age_s=7 * 86400) == []
