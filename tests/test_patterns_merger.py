"""StatefulMerger and changed_paths: created / updated / deleted, no-ops, nested paths."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.patterns.diff import changed_paths, top_level_paths
from dataflows.patterns.merger import Change, MergerState, StatefulMerger, merge_changes
from tests.test_patterns_harness import ev, run_pattern


def test_changed_paths_nested_dicts_and_lists() -> None:
    before = {"name": "a", "address": {"city": "Lyon", "zip": "69001"},
              "items": [{"sku": "x", "qty": 1}, {"sku": "y", "qty": 2}, {"sku": "z", "qty": 3}]}
    after = {"name": "a", "address": {"city": "Oslo", "zip": "69001"},
             "items": [{"sku": "x", "qty": 1}, {"sku": "y", "qty": 2}, {"sku": "z", "qty": 4}],
             "note": "new"}
    assert changed_paths(before, after) == ("address.city", "items[2].qty", "note")


def test_changed_paths_edges() -> None:
    assert changed_paths({"a": 1}, {"a": 1}) == ()
    assert changed_paths({"a": [1, 2]}, {"a": [1]}) == ("a[1]",)  # removed element
    assert changed_paths({"a": 1}, {}) == ("a",)  # removed field
    assert changed_paths({"a": 1}, {"a": {"b": 1}}) == ("a",)  # type change: outermost path
    assert changed_paths({"a": (1, 2)}, {"a": [1, 3]}) == ("a[1]",)  # tuples compare as lists
    assert changed_paths(1, 2) == ("",)
    assert changed_paths({"a": {"b": {"c": None}}}, {"a": {"b": {"c": 0}}}) == ("a.b.c",)


def test_created_updated_noop_deleted() -> None:
    m = StatefulMerger("merge")
    out, discard = m.on_item(ev("k", 1, {"a": 1, "b": {"c": 1}}, op_="insert", eid="x1"))
    assert out == (Change("created", "k", None, {"a": 1, "b": {"c": 1}}, ("a", "b"), "x1/merge", 1),)
    assert not discard
    assert m.on_item(ev("k", 2, {"a": 1, "b": {"c": 1}}, op_="update")) == ((), False)  # no-op
    (upd,), _ = m.on_item(ev("k", 3, {"a": 1, "b": {"c": 2}}, op_="replace", eid="x3"))
    assert (upd.kind, upd.before, upd.after, upd.changed) == (
        "updated", {"a": 1, "b": {"c": 1}}, {"a": 1, "b": {"c": 2}}, ("b.c",))
    assert upd.event_id == "x3/merge" and upd.event_time_ms == 3
    (dele,), discard = m.on_item(ev("k", 4, None, op_="delete", eid="x4"))
    assert (dele.kind, dele.before, dele.after, dele.changed) == ("deleted", {"a": 1, "b": {"c": 2}},
                                                                  None, ("a", "b"))
    assert discard  # state discarded on delete


def test_delete_of_unknown_key_and_markers_emit_nothing() -> None:
    assert StatefulMerger("m").on_item(ev("k", 1, None, op_="delete")) == ((), True)
    assert StatefulMerger("m").on_item(ev("k", 1, {"generation": 1}, op_="generation")) == ((), True)
    m = StatefulMerger("m")
    m.on_item(ev("k", 1, {"a": 1}))
    assert m.on_item(ev("k", 2, {"generation": 1}, op_="generation")) == ((), False)


def test_none_document_is_still_a_known_key() -> None:
    m = StatefulMerger("m")
    (c,), _ = m.on_item(ev("k", 1, None))
    assert c.kind == "created"
    (d,), discard = m.on_item(ev("k", 2, None, op_="delete"))
    assert d.kind == "deleted" and discard


def test_snapshot_round_trip() -> None:
    m = StatefulMerger("m")
    m.on_item(ev("k", 1, {"a": [1, 2]}))
    snap = pickle.loads(pickle.dumps(m.snapshot()))
    assert snap == MergerState({"a": [1, 2]}, StatefulMerger.STATE_VERSION)
    (c,), _ = StatefulMerger("m", snap).on_item(ev("k", 2, {"a": [1, 3]}))
    assert (c.kind, c.changed) == ("updated", ("a[1]",))


def apply_paths(before: Any, after: Any, paths: tuple[str, ...]) -> Any:
    """Reference check: copying `after`'s values at `paths` into `before` yields `after`."""
    import copy
    import re

    doc = copy.deepcopy(before)
    for path in paths:
        if path == "":
            return copy.deepcopy(after)
        parts = [p for p in re.split(r"\.|(\[\d+\])", path) if p]
        src, dst = after, doc
        for i, part in enumerate(parts):
            key: Any = int(part[1:-1]) if part.startswith("[") else part
            last = i == len(parts) - 1
            present = (key in src) if isinstance(src, dict) else key < len(src)
            if last:
                if isinstance(dst, dict):
                    if present:
                        dst[key] = copy.deepcopy(src[key])
                    else:
                        dst.pop(key, None)
                else:
                    while len(dst) <= key and present:
                        dst.append(None)
                    if present:
                        dst[key] = copy.deepcopy(src[key])
                    else:
                        del dst[key:]
            else:
                src, dst = src[key], dst[key]
    return doc


json_st = st.recursive(
    st.none() | st.integers(-3, 3) | st.sampled_from(["x", "y"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from("abcd"), json_st, max_size=4),
       st.dictionaries(st.sampled_from("abcd"), json_st, max_size=4))
def test_changed_paths_are_sufficient_and_minimal(before: dict[str, Any], after: dict[str, Any]) -> None:
    paths = changed_paths(before, after)
    assert list(paths) == sorted(set(paths))
    assert (paths == ()) == (before == after)
    # Applying exactly the reported paths turns before into after...
    assert apply_paths(before, after, paths) == after
    # ...and each path is needed: leaving any one out does not (lists shrink from the end, so
    # only check fields/elements that are not trailing removals).
    for p in paths:
        rest = tuple(x for x in paths if x != p)
        if not p.endswith("]"):
            assert apply_paths(before, after, rest) != after


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from([None, "delete"]),
                          st.integers(0, 3)), max_size=25))
def test_merger_matches_reference_model(ops: list[tuple[str, str | None, int]]) -> None:
    """Reference: a dict of current docs; the emitted kinds follow from it."""
    logics: dict[str, StatefulMerger] = {}
    table: dict[str, Any] = {}
    for i, (key, opn, val) in enumerate(ops):
        doc = None if opn == "delete" else {"v": val}
        logic = logics.setdefault(key, StatefulMerger("m"))
        out, discard = logic.on_item(ev(key, i, doc, op_=opn))
        if discard:
            del logics[key]
        if opn == "delete":
            expected = [("deleted", table.pop(key), None)] if key in table else []
        elif key not in table:
            expected = [("created", None, doc)]
        elif table[key] != doc:
            expected = [("updated", table[key], doc)]
        else:
            expected = []
        if opn != "delete":
            table[key] = doc
        assert [(c.kind, c.before, c.after) for c in out] == expected


def test_dataflow_merge_changes() -> None:
    items = [ev("a", 1, {"x": 1}, eid="1"), ev("b", 2, {"x": 1}, eid="2"),
             ev("a", 3, {"x": 2}, eid="3"), ev("a", 4, {"x": 2}, eid="4"),
             ev("b", 5, None, op_="delete", eid="5"), ev("c", 6, None, op_="delete", eid="6"),
             ev("b", 7, {"x": 9}, eid="7")]
    out = run_pattern(lambda s: merge_changes("merge", s, pipeline="t"), items)
    got = sorted((c.event_id, c.kind, c.changed) for c in out)
    assert got == [("1/patterns_test.merge", "created", ("x",)),
                   ("2/patterns_test.merge", "created", ("x",)),
                   ("3/patterns_test.merge", "updated", ("x",)),
                   ("5/patterns_test.merge", "deleted", ("x",)),
                   ("7/patterns_test.merge", "created", ("x",))]


@settings(max_examples=100, deadline=None)
@given(json_st | st.dictionaries(st.sampled_from("abcd") | st.integers(0, 3), json_st, max_size=4))
def test_top_level_paths_equals_diff_against_nothing(doc: Any) -> None:
    assert top_level_paths(doc) == changed_paths({}, doc) or doc == {}
