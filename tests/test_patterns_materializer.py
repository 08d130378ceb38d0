"""Materializer: upserts only on change, tombstones, and the generation sweep."""

from __future__ import annotations

import pickle
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.events import Event
from dataflows.patterns.materializer import (
    Materializer,
    ShardMaterializer,
    TableChange,
    materialize,
    shard_of,
)
from tests.test_patterns_harness import ev, run_pattern


def snap(key: str, gen: int, value: Any, *, t: int = 100, source: str = "mongo:db.c") -> Event:
    return ev(key, t, value, op_="snapshot", eid=f"snapshot:{gen}:{key}", source=source,
              headers=(("sf-generation", str(gen).encode()),))


def marker(gen: int, started_ms: int, *, source: str = "mongo:db.c", complete: bool = True) -> Event:
    return ev("__generation__", started_ms, {"generation": gen, "complete": complete},
              op_="generation", eid=f"gen:{gen}", source=source)


def change(key: str, t: int, value: Any, opn: str = "update", source: str = "mongo:db.c") -> Event:
    return ev(key, t, value, op_=opn, eid=f"chg:{key}:{t}", source=source)


def test_upsert_only_on_change_and_tombstone_discards() -> None:
    m = Materializer("mat")
    assert m.on_item(ev("k", 1, {"a": 1}, eid="e1")) == (
        (TableChange("upsert", "k", {"a": 1}, "e1/mat", 1),), False)
    assert m.on_item(ev("k", 2, {"a": 1})) == ((), False)
    assert m.on_item(ev("k", 3, {"a": 2}))[0][0].value == {"a": 2}
    assert m.on_item(ev("k", 4, None, op_="delete", eid="e4")) == (
        (TableChange("tombstone", "k", None, "e4/mat", 4),), True)


def test_delete_of_unknown_key_still_tombstones_and_markers_are_ignored() -> None:
    (t,), discard = Materializer("mat").on_item(ev("k", 1, None, op_="delete"))
    assert t.kind == "tombstone" and discard
    assert Materializer("mat").on_item(marker(1, 0)) == ((), True)
    m = Materializer("mat", pickle.loads(pickle.dumps(Materializer("mat").snapshot())))
    assert m.on_item(ev("k", 1, None)) == ((), False)  # a restored None value is known


def test_generation_sweep_tombstones_unseen_and_unchanged_keys() -> None:
    s = ShardMaterializer("mat")
    for e in [snap("a", 1, {"v": 1}), snap("b", 1, {"v": 1}), snap("c", 1, {"v": 1}),
              snap("x", 1, {"v": 1}, source="mongo:db.other"), marker(1, 100)]:
        s.on_item(e)
    # Generation 2 starts at t=1000: a is re-synced, b is not but changed after the start,
    # c is neither (deleted while the position was lost), x is another namespace.
    assert s.on_item(change("b", 900, {"v": 2}))[0][0].kind == "upsert"  # before gen 2 started
    assert s.on_item(snap("a", 2, {"v": 1}, t=1000)) == ((), False)  # same value: no upsert
    s.on_item(change("b", 1005, {"v": 3}))
    s.on_item(change("d", 1010, {"v": 1}, opn="insert"))
    out, discard = s.on_item(marker(2, 1000))
    assert [(c.kind, c.key) for c in out] == [("tombstone", "c")]
    assert out[0].event_id == "gen:2/mat:c" and not discard
    assert sorted(s.rows) == ["a", "b", "d", "x"]
    assert s.on_item(marker(3, 2000, complete=False)) == ([], False)  # only complete markers sweep


def test_sweep_discards_an_emptied_shard() -> None:
    s = ShardMaterializer("mat")
    s.on_item(snap("a", 1, 1))
    out, discard = s.on_item(marker(2, 500))
    assert [c.key for c in out] == ["a"] and discard


def test_shard_state_round_trip_and_stable_shards() -> None:
    s = ShardMaterializer("mat")
    s.on_item(snap("a", 3, {"v": 1}))
    s.on_item(change("b", 7, {"v": 2}))
    state = pickle.loads(pickle.dumps(s.snapshot()))
    assert state.version == ShardMaterializer.STATE_VERSION == 1
    assert state.rows == {"a": ({"v": 1}, 3, -(2**63), "mongo:db.c"), "b": ({"v": 2}, 0, 7, "mongo:db.c")}
    assert shard_of("order-1", 64) == zlib.crc32(b"order-1") % 64  # same in every process
    assert all(0 <= shard_of(f"k{i}", 7) < 7 for i in range(50))


ops_st = st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from(["update", "delete"]),
                            st.integers(0, 2)), max_size=30)


@settings(max_examples=100, deadline=None)
@given(ops_st)
def test_fast_path_and_shards_match_reference_table(ops: list[tuple[str, str, int]]) -> None:
    """Reference: a dict; applying the emitted changes to a copy of the table reproduces it,
    and both modes emit the same changes."""
    logics: dict[str, Materializer] = {}
    shard = ShardMaterializer("mat")
    table: dict[str, Any] = {}
    applied: dict[str, Any] = {}
    for i, (key, opn, val) in enumerate(ops):
        e = ev(key, i, {"v": val}, op_=opn)
        logic = logics.setdefault(key, Materializer("mat"))
        out, discard = logic.on_item(e)
        if discard:
            del logics[key]
        shard_out, _ = shard.on_item(e)
        assert list(out) == list(shard_out)
        expected_upsert = opn != "delete" and table.get(key, object()) != {"v": val}
        assert [c.kind for c in out] == (["tombstone"] if opn == "delete" else
                                         ["upsert"] if expected_upsert else [])
        if opn == "delete":
            table.pop(key, None)
        else:
            table[key] = {"v": val}
        for c in out:
            if c.kind == "upsert":
                applied[c.key] = c.value
            else:
                applied.pop(c.key, None)
        assert applied == table


@pytest.mark.parametrize("sweep", [False, True])
def test_dataflow_materialize(sweep: bool) -> None:
    items = [snap("a", 1, 1), snap("b", 1, 1), marker(1, 100), change("a", 150, 2),
             change("a", 160, 2), snap("a", 2, 2, t=200), change("c", 250, 1, opn="insert"),
             marker(2, 200), change("a", 300, None, opn="delete")]
    out = run_pattern(lambda s: materialize("mat", s, pipeline="t", sweep=sweep, shards=4), items)
    got = sorted((c.kind, c.key, c.value) for c in out)
    expected = [("tombstone", "a", None), ("upsert", "a", 1), ("upsert", "a", 2),
                ("upsert", "b", 1), ("upsert", "c", 1)]
    if sweep:
        expected.append(("tombstone", "b", None))  # b was not in generation 2
    assert got == sorted(expected)
