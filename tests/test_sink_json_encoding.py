"""One JSON encoding for every sink: the file sink, the Kafka sinks and the DLQ envelope
all write `dataflows.json_codec.dumps` of the same record (checked, it already holds)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from dataflows.connectors.files import JsonlSink
from dataflows.connectors.kafka.common import to_out_message
from dataflows.events import Event
from dataflows.json_codec import dumps


@dataclass(frozen=True)
class _Row:
    key: str
    value: dict[str, object]
    blob: bytes
    pair: tuple[int, int]
    event_id: str = "row-1"


RECORDS = [
    Event("k1", {"n": 1, "s": "ü", "f": 1.5}, 1_700_000_000_000, "e:1", "test"),
    _Row("k2", {"nan": math.nan, "big": 2**70, "lone": "\ud800"}, b"\xff\x00", (1, 2)),
    {"key": "k3", "value": [1, None, {"b": 2, "a": 1}], "event_id": "e:3"},
]


@pytest.mark.parametrize("record", RECORDS, ids=["event", "dataclass", "mapping"])
def test_the_file_and_kafka_sinks_write_the_same_bytes(record: object, tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    part = JsonlSink(path).build_part("s", str(path), None)
    part.write_batch([record])
    part.close()
    line = path.read_bytes().rstrip(b"\n")
    assert line == to_out_message(record).value == dumps(record)
    assert b"NaN" not in line and b"\\ud800" not in line  # strict JSON whatever the value


@dataclass
class _Typed:
    type: str
    raw: bytes


@dataclass
class _Child(_Typed):
    extra: int = 0


def test_a_dataclass_encodes_as_its_fields_and_class_name_per_exact_type() -> None:
    """The per-type encoder (built once per dataclass type) writes what the field-by-field dict
    wrote: the exact class's name and fields (a subclass its own), a field named `type` over
    the class name, the values encoded recursively."""
    assert dumps(_Typed("mine", b"\xff")) == b'{"raw":{"base64":"/w=="},"type":"mine"}'
    assert dumps([_Child("c", b"a", 2), _Typed("t", b"b")]) == \
        b'[{"extra":2,"raw":"a","type":"c"},{"raw":"b","type":"t"}]'
    assert dumps(Event("k", {"n": _Child("x", b"", 1)}, 1, "e", "s")) == (
        b'{"event_id":"e","event_time_ms":1,"headers":[],"key":"k","op":null,"source":"s",'
        b'"type":"Event","value":{"n":{"extra":1,"raw":"","type":"x"}}}'
    )
