"""One dead-letter path: a sink's own failures go to the pipeline's configured `dlq`.

Before issue 11 a Kafka or MongoDB sink wrote its SINK_WRITE / UNSUPPORTED_TYPE
letters to `.streamforge/<p>/out/{kafka,mongo}-sink-dlq.jsonl` (a second JSONL
writer) whatever the `dlq` section said. These tests build the sinks from a whole
pipeline config and check where a failed item's dead letter lands.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataflows.config import Config, ConfigError
from dataflows.connectors.dlq import JsonlDeadLetterSink, read_dead_letters
from dataflows.connectors.kafka import kafka_sink_from_config
from dataflows.connectors.mongo import mongo_sink_from_config
from dataflows.dead_letter import DeadLetter, ErrorCode
from dataflows.events import RawRecord
from tests.fixtures.kafka import read_topic


def _kafka_sink_config(dlq: dict[str, object]) -> Config:
    # check: false and a fixed partition count: building the sink needs no broker
    sink = {"type": "kafka", "brokers": ["127.0.0.1:1"], "topic": "out", "check": False, "partitions": 1}
    return Config({"pipeline": {"name": "p"}, "sink": sink, "dlq": dlq}, "test.yaml")


def _write_unencodable(cfg: Config) -> None:
    sink = kafka_sink_from_config(cfg.section("sink"), "p")
    part = sink.build_part("sink", "00000", None)
    part.write_batch([("k1", object())])  # an object has no JSON form: UNSUPPORTED_TYPE


def test_a_kafka_sinks_dead_letters_go_to_the_configured_file_dlq(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    dlq = tmp_path / "configured-dlq.jsonl"
    _write_unencodable(_kafka_sink_config({"type": "file", "path": str(dlq)}))
    letters = list(read_dead_letters(dlq))
    assert [(d.error_code, d.pipeline) for d in letters] == [(ErrorCode.UNSUPPORTED_TYPE, "p")]
    assert not (tmp_path / ".streamforge").exists(), "no second JSONL DLQ file"


def test_a_kafka_sinks_dead_letters_go_to_the_configured_kafka_dlq(kafka_bootstrap: str, make_topic) -> None:
    topic = make_topic(1, "routed-dlq")
    cfg = _kafka_sink_config({"type": "kafka", "brokers": [kafka_bootstrap], "topic": topic})
    _write_unencodable(cfg)
    letters = [DeadLetter.from_json(m.value()) for m in read_topic(kafka_bootstrap, topic)]
    assert [d.error_code for d in letters] == [ErrorCode.UNSUPPORTED_TYPE]


def test_a_mongo_sinks_dead_letters_go_to_the_configured_file_dlq(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    dlq = tmp_path / "configured-dlq.jsonl"
    sink_cfg = {"type": "mongo", "uri": "mongodb://127.0.0.1:1", "database": "d", "collection": "c"}
    cfg = Config({"sink": sink_cfg, "dlq": {"type": "file", "path": str(dlq)}}, "test.yaml")
    sink = mongo_sink_from_config(cfg.section("sink"), "p")
    letter = DeadLetter("SINK_WRITE", "m", "E", "p.mongo-sink", "p", b"{}", "e1", "s")
    sink.on_dead_letters([letter])
    assert [d.event_id for d in read_dead_letters(dlq)] == ["e1"]
    assert not (tmp_path / ".streamforge").exists()


@pytest.mark.parametrize("key", ["dlq-path", "dlq-topic", "dlq-brokers"])
@pytest.mark.parametrize("kind", ["kafka", "mongo"])
def test_the_old_per_sink_dlq_keys_are_refused_naming_the_dlq_section(kind: str, key: str) -> None:
    sink = {"type": kind, "brokers": ["127.0.0.1:1"], "topic": "out", "check": False, "partitions": 1,
            "uri": "mongodb://127.0.0.1:1", "database": "d", "collection": "c", key: "x"}
    cfg = Config({"sink": sink, "dlq": {"type": "file", "path": "d.jsonl"}}, "test.yaml")
    build = kafka_sink_from_config if kind == "kafka" else mongo_sink_from_config
    with pytest.raises(ConfigError) as info:
        build(cfg.section("sink"), "p")
    text = str(info.value)
    assert text.startswith(f"sink.{key}: ") and "dlq.path" in text and "dlq.topic" in text


def test_a_dlq_section_without_its_target_is_refused_and_none_means_the_default_file() -> None:
    from dataflows.connectors.dlq import JsonlDeadLetterAppender, sink_dead_letters

    with pytest.raises(ConfigError, match=r"^dlq\.path: required"):
        sink_dead_letters(Config({"sink": {}, "dlq": {"type": "file"}}, "t.yaml").section("sink"), "p")
    with pytest.raises(ConfigError, match=r"^dlq\.topic: required"):
        sink_dead_letters(Config({"sink": {}, "dlq": {"type": "kafka", "brokers": "b:1"}}, "t").section("sink"), "p")
    alone = sink_dead_letters(Config({}, "t.yaml"), "p")
    assert isinstance(alone, JsonlDeadLetterAppender) and str(alone.path) == ".streamforge/p/out/dlq.jsonl"


def _letter(i: int) -> DeadLetter:
    return DeadLetter("SCHEMA", "bad", "E", "p.parse", "p", b"x", f"e{i}", "s")


def _sink_letter_after_a_snapshot(path: Path) -> tuple[JsonlDeadLetterSink, int]:
    """A file DLQ holding e0 (snapshotted), then a sink's own letter e100, then e1 (not
    snapshotted: replayed after a crash); the sink and the snapshot's offset."""
    from dataflows.connectors.dlq import sink_dead_letters

    sink = JsonlDeadLetterSink(path)
    part = sink.build_part("dlq", str(path), None)
    part.write_batch([_letter(0)])
    offset = part.snapshot()
    cfg = Config({"sink": {}, "dlq": {"type": "file", "path": str(path)}}, "t.yaml").section("sink")
    sink_dead_letters(cfg, "p")([_letter(100)])  # the sink's own letter, after the snapshot
    part.write_batch([_letter(1)])
    part.close()
    return sink, offset


def test_the_file_dlq_keeps_sink_letters_written_after_its_snapshot_on_resume(tmp_path: Path) -> None:
    """The DLQ file sink truncates its own replayed tail on resume; a sink's dead letters
    appended to the same file after that snapshot are kept (their epoch may have committed)."""
    path = tmp_path / "dlq.jsonl"
    sink, offset = _sink_letter_after_a_snapshot(path)
    resumed = sink.build_part("dlq", str(path), offset)
    resumed.write_batch([_letter(1)])  # the replay
    resumed.close()
    assert sorted(d.event_id for d in read_dead_letters(path)) == ["e0", "e1", "e100"]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3


def test_a_crash_inside_the_resume_loses_no_sink_letter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resume truncates the file and writes the sink's letters back: a process killed between
    the two must not lose them (the next resume finds them again)."""
    from dataflows.connectors.files import jsonl as files

    path = tmp_path / "dlq.jsonl"
    sink, offset = _sink_letter_after_a_snapshot(path)
    real = files.JsonlSinkPartition.resume_at

    def truncate_then_die(self: files.JsonlSinkPartition, at: int) -> None:
        real(self, at)
        raise SystemExit("killed after the truncate")

    monkeypatch.setattr(files.JsonlSinkPartition, "resume_at", truncate_then_die)
    with pytest.raises(SystemExit):
        sink.build_part("dlq", str(path), offset)
    monkeypatch.setattr(files.JsonlSinkPartition, "resume_at", real)
    resumed = sink.build_part("dlq", str(path), offset)
    resumed.write_batch([_letter(1)])
    resumed.close()
    assert sorted(d.event_id for d in read_dead_letters(path)) == ["e0", "e1", "e100"]


def test_a_fresh_file_dlq_drops_its_own_old_lines(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    sink = JsonlDeadLetterSink(path)
    part = sink.build_part("dlq", str(path), None)
    part.write_batch([_letter(0)])
    part.close()
    sink.build_part("dlq", str(path), None).close()
    assert list(read_dead_letters(path)) == []


def test_dead_letters_of_any_item_round_trip_through_the_appender(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    cfg = Config({"dlq": {"path": str(path)}}, "t.yaml").section("sink")
    rec = RawRecord(b"\xff", "e9", "s")
    from dataflows.connectors.dlq import sink_dead_letters
    from dataflows.dead_letter import dead_letter

    sink_dead_letters(cfg, "p")([dead_letter(rec, code="X", stage="st", pipeline="p")])
    (got,) = read_dead_letters(path)
    assert (got.payload, got.event_id, got.error_code) == (b"\xff", "e9", "X")


def test_a_pipeline_sends_parse_and_sink_failures_to_its_one_file_dlq(
    tmp_path: Path, monkeypatch, kafka_bootstrap: str, make_topic
) -> None:
    """Through the orders pipeline (file in, at-least-once Kafka out on Tansu, file DLQ): a
    malformed line (parse) and an order too large for the producer (`message.max.bytes`, a
    permanent SINK_WRITE in librdkafka) both end in `dlq.path`; no second DLQ file appears."""
    from bytewax.testing import run_main

    from dataflows.config import load_config
    from dataflows.pipelines import orders
    from tests.fixtures.kafka import read_topic
    from tests.test_pipelines_orders import REPO

    monkeypatch.chdir(tmp_path)
    good = [json.dumps({"event_id": f"oe-{i}", "op": "insert", "ts": "2026-01-01T00:00:00Z", "order_id": f"o-{i}",
                        "status": "created", "amount": 1.0, "version": 1}) for i in range(3)]
    huge = json.dumps({"event_id": "oe-huge", "op": "insert", "ts": "2026-01-01T00:00:01Z", "order_id": "o-huge",
                       "status": "created", "pad": "x" * 1_500_000, "version": 1})
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([*good, "{not json", huge]) + "\n")
    out = make_topic(1, "routed-table")
    cfg = load_config(REPO / "config" / "orders.yaml", environ={}).data
    cfg["source"] = {"type": "file", "path": str(src)}
    cfg["sink"] = {"type": "kafka", "brokers": [kafka_bootstrap], "topic": out}
    cfg["dlq"] = {"type": "file", "path": str(tmp_path / "dlq.jsonl")}
    cfg["limits"] = {"max-record-bytes": "4MiB"}
    cfg.pop("recovery", None)
    run_main(orders.build_flow(Config(cfg, "routed")))
    letters = list(read_dead_letters(tmp_path / "dlq.jsonl"))
    assert sorted(d.error_code for d in letters) == ["MALFORMED_JSON", "SINK_WRITE"]
    (sink_letter,) = [d for d in letters if d.error_code == "SINK_WRITE"]
    assert sink_letter.key == b"o-huge" and sink_letter.coords["topic"] == out
    assert sink_letter.stage.startswith("orders.") and "sink" in sink_letter.stage
    assert {m.key() for m in read_topic(kafka_bootstrap, out)} == {b"o-0", b"o-1", b"o-2"}
    assert not (tmp_path / ".streamforge").exists() or not list((tmp_path / ".streamforge").rglob("*sink-dlq*"))


def test_the_kafka_dlq_writer_is_shared_safely_by_worker_threads(kafka_bootstrap: str, make_topic) -> None:
    """A sink's partitions in one process (one per worker thread) share the writer
    `sink_dead_letters` built: concurrent calls each confirm their own letters."""
    import threading

    topic = make_topic(1, "shared-dlq")
    cfg = Config({"sink": {}, "dlq": {"type": "kafka", "brokers": [kafka_bootstrap], "topic": topic}}, "t")
    from dataflows.connectors.dlq import sink_dead_letters

    write = sink_dead_letters(cfg.section("sink"), "p")
    threads = [threading.Thread(target=write, args=([_letter(t * 100 + i) for i in range(25)],)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = sorted(DeadLetter.from_json(m.value()).event_id for m in read_topic(kafka_bootstrap, topic))
    assert got == sorted(f"e{t * 100 + i}" for t in range(4) for i in range(25))
