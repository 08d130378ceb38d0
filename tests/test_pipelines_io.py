"""Source / sink construction by `type`, config errors naming the key, the summary."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dataflows.config import Config, ConfigError
from dataflows.connectors.dlq import JsonlDeadLetterSink
from dataflows.connectors.files import JsonlSink, JsonlSource
from dataflows.dead_letter import ErrorCode, dead_letter
from dataflows.events import RawRecord
from dataflows.pipelines.io import (
    build_changes_sink,
    build_dlq_sink,
    build_sink,
    build_source,
    item_key,
)
from dataflows.pipelines.summary import format_summary, summarize


def section(data: dict, name: str) -> Config:
    return Config({name: data}, "p.yaml").section(name)


def test_file_types_build_jsonl_connectors(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("{}\n")
    src = build_source(section({"type": "file", "path": str(tmp_path / "*.jsonl")}, "source"), "p")
    assert isinstance(src, JsonlSource) and src.list_parts() == [str(tmp_path / "a.jsonl")]
    sink = build_sink(section({"path": str(tmp_path / "o.jsonl")}, "sink"), "p")  # type defaults to file
    assert isinstance(sink, JsonlSink) and sink.path == tmp_path / "o.jsonl"
    assert isinstance(build_dlq_sink(section({"type": "file", "path": "d.jsonl"}, "dlq"), "p"), JsonlDeadLetterSink)
    changes = build_changes_sink(section({"path": "t", "changes-path": str(tmp_path / "c.jsonl")}, "sink"), "p")
    assert isinstance(changes, JsonlSink) and changes.path == tmp_path / "c.jsonl"
    assert build_changes_sink(section({"path": "t"}, "sink"), "p") is None
    tail = build_source(section({"path": str(tmp_path / "later.jsonl"), "tail": True}, "source"), "p")
    assert tail.list_parts() == [str(tmp_path / "later.jsonl")]  # tail waits for a missing file


@pytest.mark.parametrize(
    ("build", "name", "data", "message"),
    [
        (build_source, "source", {"type": "ftp", "path": "x"}, "source.type: must be one of file, kafka, mongo"),
        (build_source, "source", {"type": "file"}, "source.path: required"),
        (build_source, "source", {"type": "file", "path": "/nonexistent/*.jsonl"}, "source.path: no file matches"),
        (build_source, "source", {"type": "file", "path": "x", "tail": "maybe"}, "source.tail: expected true or false"),
        (build_source, "source", {"type": "file", "path": "x", "tail": True, "poll-interval": "often"},
         "source.poll-interval: bad duration"),
        (build_sink, "sink", {"type": "s3"}, "sink.type: must be one of file, kafka, mongo"),
        (build_sink, "sink", {"type": "file"}, "sink.path: required key is missing"),
        (build_dlq_sink, "dlq", {"type": "mongo"}, "dlq.type: must be one of file, kafka"),
        (build_changes_sink, "sink", {"type": "file", "path": "t", "changes-topic": "c"},
         "sink.changes-topic: needs type 'kafka'"),
    ],
)
def test_bad_sections_raise_config_errors_naming_the_full_key(build, name, data, message) -> None:
    with pytest.raises(ConfigError) as info:
        build(section(data, name), "p")
    assert str(info.value).startswith(message)


def test_connector_modules_load_lazily_and_a_missing_one_names_the_key(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "dataflows.connectors.kafka", None)  # import fails
    with pytest.raises(ConfigError, match=r"^sink\.type: 'kafka' is not available"):
        build_sink(section({"type": "kafka", "topic": "t"}, "sink"), "p")
    with pytest.raises(ConfigError, match=r"^dlq\.type: 'kafka' is not available"):
        build_dlq_sink(section({"type": "kafka"}, "dlq"), "p")


def test_item_key_routes_by_key_then_event_id() -> None:
    rec = RawRecord(b"x", "file:f:1", "file:f", key=b"k1")
    assert item_key(rec) == "k1"
    assert item_key(dead_letter(RawRecord(b"x", "file:f:2", "file:f"), code="X", stage="s", pipeline="p")) == "file:f:2"
    assert item_key({"key": 5}) == "5" and item_key(object()) == ""


def test_summary_counts_outputs_by_kind_and_dead_letters_by_code_and_stage(tmp_path: Path) -> None:
    table, changes, dlq = tmp_path / "t.jsonl", tmp_path / "c.jsonl", tmp_path / "d.jsonl"
    table.write_text('{"kind":"upsert"}\n{"kind":"upsert"}\n{"kind":"tombstone"}\n')
    changes.write_text('{"kind":"created"}\n\n')
    part = JsonlDeadLetterSink(dlq).build_part("d", str(dlq), None)
    raw = RawRecord(b"{", "file:x:1", "file:x")
    part.write_batch([
        dead_letter(raw, code=ErrorCode.MALFORMED_JSON, stage="orders.parse", pipeline="orders"),
        dead_letter(raw, code=ErrorCode.MALFORMED_JSON, stage="orders.parse", pipeline="orders"),
        dead_letter(raw, code=ErrorCode.USER_FUNCTION, stage="orders.enrich", pipeline="orders"),
    ])
    part.close()
    cfg = Config({"pipeline": {"name": "orders"},
                  "sink": {"type": "file", "path": str(table), "changes-path": str(changes)},
                  "dlq": {"type": "file", "path": str(dlq)}})
    d = summarize(cfg)
    assert d["outputs"]["sink"]["by_kind"] == {"tombstone": 1, "upsert": 2}
    assert d["outputs"]["changes"]["records"] == 1
    assert d["dlq"]["by_code"] == {"MALFORMED_JSON": 2, "USER_FUNCTION": 1}
    assert d["dlq"]["by_stage"] == {"orders.enrich": 1, "orders.parse": 2}
    text = format_summary(d)
    assert "3 dead letters" in text and "upsert 2" in text and "MALFORMED_JSON 2" in text
    kafka = summarize(Config({"sink": {"type": "kafka"}, "dlq": {"type": "kafka"}}))
    assert kafka["outputs"]["sink"]["path"] is None and "not a file" in format_summary(kafka)
