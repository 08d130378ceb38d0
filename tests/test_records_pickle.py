"""The patterns' output records pickle as the class and a plain tuple (`records.tuple_pickled`).

`TableChange` (the lane's and Materializer's output) and `Change` (the merger's) cross Bytewax
workers on their way to the sinks' partitions, and on a cluster every crossing pickles them:
before, as slotted dataclasses, through `dataclasses._dataclass_getstate` (a `fields()` call per
object). A pickle of that older form still loads.

`OrdersLaneState` (the orders lane's per-key snapshot) too: Bytewax pickles it once per dirty key
per epoch; its older form (and a state list shorter by the later-appended fields) still loads.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from dataclasses import dataclass
from typing import Any

import pytest

from dataflows.patterns.lane import OrdersLaneState
from dataflows.patterns.materializer import TableChange
from dataflows.patterns.merger import Change
from dataflows.records import tuple_pickled

UPSERT = TableChange("upsert", "o-1", {"status": "paid", "n": [1, 2.5]}, "kafka:orders:0:7/lane", 1700000000000)
CHANGE = Change("updated", "o-1", {"status": "new"}, {"status": "paid"}, ("status",), "kafka:orders:0:7/m", 17)
LANE = OrdersLaneState({"kafka:orders:0:5": (1700000000000, 1800000000000), "kafka:orders:0:7": (1700000000500, 1800000000900)},
                       {"status": "paid", "items": [{"sku": "a", "qty": 2}]}, True, 1, 1800000001000)


def _old_form(obj: Any, protocol: int, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """The pickle the class made before `tuple_pickled`: without its `__reduce__`, Python 3.11
    pickles a slotted dataclass through `dataclasses._dataclass_getstate`."""
    with monkeypatch.context() as m:
        m.delattr(type(obj), "__reduce__")
        data = pickle.dumps(obj, protocol=protocol)
    assert b"__reduce__" not in data
    return data


@pytest.mark.parametrize("obj", [UPSERT, CHANGE, TableChange("tombstone", "k", None, "e", 0), LANE,
                                 OrdersLaneState({}, None, False)])
@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_round_trip_and_the_old_form_loads(obj: Any, protocol: int, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _old_form(obj, protocol, monkeypatch)
    assert old != pickle.dumps(obj, protocol=protocol)  # the older form: copyreg and a state list
    for again in (pickle.loads(pickle.dumps(obj, protocol=protocol)), copy.copy(obj), copy.deepcopy(obj),
                  pickle.loads(old)):
        assert again == obj and type(again) is type(obj)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(pickle.loads(pickle.dumps(obj)), dataclasses.fields(obj)[1].name, "x")


def test_pickling_looks_up_no_dataclass_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = dataclasses.fields

    def counting(obj: Any) -> Any:
        calls.append(type(obj).__name__)
        return real(obj)

    monkeypatch.setattr(dataclasses, "fields", counting)
    assert pickle.loads(pickle.dumps([UPSERT, CHANGE, LANE])) == [UPSERT, CHANGE, LANE]
    assert calls == []


def test_an_orders_lane_state_without_its_later_fields_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A state pickled before `clock_ms` was appended (a shorter state list) gets its default."""
    with monkeypatch.context() as m:
        m.delattr(OrdersLaneState, "__reduce__")
        m.setattr(OrdersLaneState, "__getstate__", lambda self: [self.seen, self.value, self.known, 1])
        old = pickle.dumps(LANE)
    assert pickle.loads(old) == dataclasses.replace(LANE, clock_ms=None)


def test_tuple_pickled_refuses_what_it_cannot_rebuild() -> None:
    @dataclass
    class Plain:
        a: int
        b: int

    with pytest.raises(TypeError, match="slotted"):
        tuple_pickled(Plain)

    @dataclass(slots=True)
    class Derived:
        a: int
        b: int = dataclasses.field(init=False, default=0)

    with pytest.raises(TypeError, match="__init__"):
        tuple_pickled(Derived)
