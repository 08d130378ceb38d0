"""Pickling `Event` / `RawRecord`: every item crossing Bytewax workers and every snapshot pays it.

The slotted frozen dataclasses pickled through `dataclasses._dataclass_getstate`, which calls
`dataclasses.fields()` on every pickle (and `_dataclass_setstate` on every load); they now reduce
to the class and a plain tuple of their fields. Pickles written by the old form (state written
by main at 732f8f2, protocols 2 and 4, the hex below) still load into equal objects.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any

import pytest

from dataflows.events import Event, RawRecord

EVENT = Event("o-1", {"a": 1, "n": [1.5, None]}, 1700000000000, "kafka:orders:0:7", "kafka:orders", "update",
              (("h", b"v"),))
RAW = RawRecord(b'{"a":1}', "kafka:orders:0:7", "kafka:orders", b"o-1", 1700000000000, (("h", b"v"),),
                {"topic": "orders", "partition": 0, "offset": 7})

# pickle.dumps(EVENT / RAW, protocol=2 / 4) on 732f8f2 (dataclasses' getstate/setstate form)
OLD_PICKLES = {
    ("Event", 2): "80026364617461666c6f77732e6576656e74730a4576656e740a7100298171015d71022858030000006f2d3171037d"
                  "71042858010000006171054b0158010000006e71065d710728473ff80000000000004e65758a060068e5cf8b015810"
                  "0000006b61666b613a6f72646572733a303a377108580c0000006b61666b613a6f726465727371095806000000757064"
                  "617465710a580100000068710b635f636f646563730a656e636f64650a710c580100000076710d58060000006c617469"
                  "6e31710e86710f52711086711185711265622e",
    ("Event", 4): "80049587000000000000008c1064617461666c6f77732e6576656e7473948c054576656e749493942981945d94288c03"
                  "6f2d31947d94288c0161944b018c016e945d9428473ff80000000000004e65758a060068e5cf8b018c106b61666b613a"
                  "6f72646572733a303a37948c0c6b61666b613a6f7264657273948c06757064617465948c0168944301769486948594"
                  "65622e",
    ("RawRecord", 2): "80026364617461666c6f77732e6576656e74730a5261775265636f72640a7100298171015d710228635f636f6465"
                      "63730a656e636f64650a710358070000007b2261223a317d710458060000006c6174696e31710586710652710758"
                      "100000006b61666b613a6f72646572733a303a377108580c0000006b61666b613a6f72646572737109680358030000"
                      "006f2d31710a680586710b52710c8a060068e5cf8b01580100000068710d6803580100000076710e680586710f5271"
                      "108671118571127d7113285805000000746f706963711458060000006f726465727371155809000000706172746974"
                      "696f6e71164b0058060000006f666673657471174b077565622e",
    ("RawRecord", 4): "8004959e000000000000008c1064617461666c6f77732e6576656e7473948c095261775265636f72649493942981"
                      "945d942843077b2261223a317d948c106b61666b613a6f72646572733a303a37948c0c6b61666b613a6f72646572"
                      "739443036f2d31948a060068e5cf8b018c01689443017694869485947d94288c05746f706963948c066f72646572"
                      "73948c09706172746974696f6e944b008c066f6666736574944b077565622e",
}


@pytest.mark.parametrize(("name", "protocol"), sorted(OLD_PICKLES))
def test_a_pickle_written_by_the_old_form_still_loads(name: str, protocol: int) -> None:
    loaded = pickle.loads(bytes.fromhex(OLD_PICKLES[(name, protocol)]))
    assert loaded == {"Event": EVENT, "RawRecord": RAW}[name]
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.event_id = "x"  # still the frozen class


@pytest.mark.parametrize("obj", [EVENT, RAW, Event("k", None, 0, "e", "s"), RawRecord(b"", "e", "s")])
@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_copy_and_deepcopy_round_trip(obj: Any, protocol: int) -> None:
    for again in (pickle.loads(pickle.dumps(obj, protocol=protocol)), copy.copy(obj), copy.deepcopy(obj)):
        assert again == obj and type(again) is type(obj)
        assert [getattr(again, f.name) for f in dataclasses.fields(obj)] == \
               [getattr(obj, f.name) for f in dataclasses.fields(obj)]


def test_pickling_looks_up_no_dataclass_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """`dataclasses._dataclass_getstate` / `_setstate` call `fields()` per object: the plain
    tuple form does not (the cost this pins is per pickled item)."""
    calls = []
    real = dataclasses.fields

    def counting(obj: Any) -> Any:
        calls.append(type(obj).__name__)
        return real(obj)

    monkeypatch.setattr(dataclasses, "fields", counting)
    data = pickle.dumps([EVENT, RAW])
    assert pickle.loads(data) == [EVENT, RAW]
    assert calls == []
