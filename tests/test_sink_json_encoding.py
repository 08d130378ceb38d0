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
