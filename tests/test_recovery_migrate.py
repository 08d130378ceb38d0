"""State schema migration v1 -> v2 of pickled state in a recovery directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource

from recovery.migrate import (
    MigrationError,
    clear_migrations,
    migrate_dir,
    register_migration,
    state_version,
)
from recovery.partitions import init_partitions
from tests.test_recovery_support import CounterV1, CounterV2, run


def _v1(state: CounterV1 | None, value: int) -> tuple[CounterV1, int]:
    state = CounterV1(count=(state.count if state else 0) + value)
    return state, state.count


def _v2(state: CounterV2 | None, value: int) -> tuple[CounterV2, tuple[int, int]]:
    assert state is None or isinstance(state, CounterV2), f"unmigrated state {state!r}"
    state = CounterV2(
        total=(state.total if state else 0) + value, updates=(state.updates if state else 0) + 1
    )
    return state, (state.total, state.updates)


def _flow(items: list, out: list, mapper) -> Dataflow:
    flow = Dataflow("mig")
    s = op.input("inp", flow, TestingSource(items, batch_size=10))
    op.output("out", op.stateful_map("count", s, mapper), TestingSink(out))
    return flow


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    clear_migrations()
    yield
    clear_migrations()


def test_v1_to_v2(tmp_path: Path) -> None:
    rd = tmp_path / "rec"
    init_partitions(rd, 2)
    items = [(f"k{i % 5}", 2) for i in range(20)]  # each key: 4 x 2
    run(_flow(items, [], _v1), rd)

    register_migration("mig.count", 1, 2, lambda s: CounterV2(total=s.count, updates=s.count // 2))
    rewritten = migrate_dir(rd)
    assert rewritten >= 5
    assert migrate_dir(rd) == 0  # idempotent: already v2

    out: list = []
    run(_flow([*items, *[(f"k{i}", 1) for i in range(5)]], out, _v2), rd)
    assert sorted(out) == [(f"k{i}", (9, 5)) for i in range(5)]


def test_version_detection_and_bad_migration() -> None:
    assert state_version(CounterV1(1)) == 1 and state_version(CounterV2(1, 1)) == 2
    assert state_version({"version": 3}) == 3 and state_version(object()) == 1
    with pytest.raises(ValueError):
        register_migration("x", 2, 1, lambda s: s)


def test_migration_returning_wrong_version_fails(tmp_path: Path) -> None:
    rd = tmp_path / "rec"
    init_partitions(rd, 1)
    run(_flow([("a", 1)], [], _v1), rd)
    register_migration("mig.count", 1, 2, lambda s: s)
    with pytest.raises(MigrationError, match="returned version 1"):
        migrate_dir(rd)
