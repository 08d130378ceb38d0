"""`streamforge dlq inspect/replay` end to end on a real Tansu broker.

Flow v1 dead-letters records over its 100-byte limit; the DLQ is inspected,
then replayed twice to a retry topic; flow v2 (limit raised, a Deduplicator by
event id) reads the retry topic: every dead letter comes out exactly once,
with its original key and event id.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import run_main
from confluent_kafka import Producer

from dataflows.connectors.dlq import JsonlDeadLetterAppender
from dataflows.dead_letter import DeadLetter, dead_letter
from dataflows.events import RawRecord
from streamforge_ops.cli import main
from streamforge_ops.dlq_replay import DlqFilter, KafkaTarget, RateLimiter, replay
from tests.fixtures.kafka import read_topic
from tests.test_kafka_harness import build, event_id_counts


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, (json.loads(out) if "--json" in argv and code == 0 else out)


def test_dlq_inspect_replay_twice_with_dedup_downstream(
    kafka_bootstrap: str, make_topic: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    b = kafka_bootstrap
    src, out1, dlq = make_topic(1, "rp-in"), make_topic(1, "rp-out1"), make_topic(1, "rp-dlq")
    retry, out2, dlq2 = make_topic(1, "rp-retry"), make_topic(1, "rp-out2"), make_topic(1, "rp-dlq2")
    p = Producer({"bootstrap.servers": b})
    values = {}
    for i in range(6):
        pad = "x" * (200 if i % 2 else 1)  # odd ones are too large for flow v1
        values[i] = json.dumps({"id": f"o{i}", "pad": pad}).encode()
        p.produce(src, values[i], f"key{i}".encode(), partition=0)
    p.produce(src, b"{broken", b"kb", partition=0)  # MALFORMED_JSON, filtered out of the replay
    assert p.flush(10) == 0

    def spec(source: str, out: str, dlq_topic: str, limit: int, dedup: bool) -> dict[str, Any]:
        return {
            "source": {"brokers": [b], "topics": [source], "tail": False},
            "sink": {"brokers": [b], "topic": out},
            "dlq": {"type": "kafka", "brokers": [b], "topic": dlq_topic},
            "max_record_bytes": limit, "dedup": dedup,
        }

    run_main(build(spec(src, out1, dlq, 100, False), "v1"))
    assert len(read_topic(b, out1, partitions=1)) == 3

    # issue 9 path 6: a pipeline's output (its records carry sf-event-id) is never a replay target
    assert main(["dlq", "replay", "--brokers", b, "--topic", dlq, "--to", out1, "--no-progress"]) == 2
    assert "refusing to replay into" in capsys.readouterr().err
    assert len(read_topic(b, out1, partitions=1)) == 3
    code, dry = _cli(capsys, "dlq", "replay", "--brokers", b, "--topic", dlq, "--to", out1,
                     "--allow-output-topic", "--dry-run", "--json", "--no-progress")
    assert code == 0 and dry["by_topic"] == {out1: 4}, "an at-least-once output, explicitly"

    code, summary = _cli(capsys, "dlq", "inspect", "--brokers", b, "--topic", dlq, "--json")
    assert code == 0
    assert summary["by_error_code"] == {"OVERSIZED": 3, "MALFORMED_JSON": 1}
    assert summary["by_stage"] == {"v1.parse": 4}
    assert summary["samples"]["MALFORMED_JSON"][0]["payload"] == "{broken"

    code, dry = _cli(capsys, "dlq", "replay", "--brokers", b, "--topic", dlq, "--error-code", "OVERSIZED",
                     "--to", retry, "--dry-run", "--json", "--no-progress")
    assert code == 0 and dry["by_topic"] == {retry: 3} and dry["replayed"] == 0
    assert read_topic(b, retry, partitions=1) == []

    for tag in ("1", "2"):
        code, rep = _cli(capsys, "dlq", "replay", "--brokers", b, "--topic", dlq, "--error-code", "OVERSIZED",
                         "--to", retry, "--rate", "1000", "--tag", tag, "--json")
        assert code == 0 and rep["replayed"] == 3 and rep["matched"] == 3

    replayed = read_topic(b, retry, partitions=1)
    assert len(replayed) == 6
    for m in replayed:
        i = int(m.key().decode()[3:])
        headers = dict(m.headers())
        assert m.value() == values[i] and i % 2 == 1  # original key and payload bytes
        assert headers["sf-event-id"] == f"kafka:{src}:0:{i}".encode()
        assert headers["sf-replay"] in (b"1", b"2")

    run_main(build(spec(retry, out2, dlq2, 64 * 1024, True), "v2"))
    fixed = read_topic(b, out2, partitions=1)
    assert event_id_counts(fixed) == Counter({f"kafka:{src}:0:{i}": 1 for i in (1, 3, 5)})
    assert sorted(m.key() for m in fixed) == [b"o1", b"o3", b"o5"]
    assert read_topic(b, dlq2, partitions=1) == []


def _letter(i: int, code: str, stage: str, t: int) -> DeadLetter:
    rec = RawRecord(f"payload{i}".encode(), f"file:x:{i}", "file:x", key=f"k{i}".encode(),
                    coords={"path": "x", "line": i})
    dl = dead_letter(rec, code=code, stage=stage, pipeline="p", message="boom")
    return DeadLetter(**{**dl.__dict__, "first_failure_ms": t, "last_failure_ms": t})


def test_dlq_inspect_file_filters_and_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dlq.jsonl"
    JsonlDeadLetterAppender(path)([
        _letter(0, "SCHEMA", "p.parse", 1_000), _letter(1, "SCHEMA", "p.parse", 2_000),
        _letter(2, "USER_FUNCTION", "p.enrich", 3_000),
    ])
    code, s = _cli(capsys, "dlq", "inspect", "--file", str(path), "--since", "1500", "--json")
    assert code == 0 and s["total"] == 3 and s["by_error_code"] == {"SCHEMA": 1, "USER_FUNCTION": 1}
    code, s = _cli(capsys, "dlq", "inspect", "--file", str(path), "--stage", "p.parse", "--until",
                   "1970-01-01T00:00:01.500", "--json")
    assert code == 0 and s["matched"] == 1
    code, text = _cli(capsys, "dlq", "inspect", "--file", str(path))
    assert code == 0 and "SCHEMA" in text and "payload0" in text
    # a file DLQ has no topic in its coordinates: replay needs --to
    letters = list(JsonlDeadLetterAppender(path).read())
    rep = replay(letters, target=KafkaTarget(None), flt=DlqFilter(), dry_run=True)
    assert rep.no_topic == 3 and rep.matched == 3


@pytest.mark.parametrize("argv", [
    ["dlq", "inspect"],
    ["dlq", "inspect", "--file", "/no/such/file"],
    ["dlq", "inspect", "--file", "x", "--topic", "t"],
    ["dlq", "replay", "--file", "/etc/hostname", "--since", "later"],
    ["dlq", "replay", "--file", "/etc/hostname", "--rate", "0", "--dry-run"],
    ["dlq", "replay", "--file", "/etc/hostname"],
    ["dlq", "inspect", "--file", "/etc/hostname", "--since", "5", "--until", "4"],
])
def test_dlq_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "streamforge: error:" in capsys.readouterr().err


def test_rate_limiter_spaces_calls() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(d: float) -> None:
        slept.append(d)
        now[0] += d

    limiter = RateLimiter(4, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.wait()
    assert slept == [0.25, 0.25, 0.25, 0.25]


def test_replay_refuses_the_configured_exactly_once_output(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--config` + `--to` naming the pipeline's exactly-once output topic: refused (even empty,
    even as a dry run); its input topic is accepted (issue 9, path 6)."""
    import yaml

    b = kafka_bootstrap
    src, out = make_topic(1, "eo-in"), make_topic(1, "eo-out")
    dlq = tmp_path / "dlq.jsonl"
    JsonlDeadLetterAppender(dlq)([_letter(0, "SCHEMA", "p.parse", 1_000)])
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({
        "pipeline": {"name": "p"},
        "source": {"type": "kafka", "brokers": [b], "topics": [src]},
        "sink": {"type": "kafka", "brokers": [b], "topic": out, "mode": "exactly-once"},
        "dlq": {"type": "file", "path": str(dlq)},
    }))
    base = ["dlq", "replay", "--config", str(cfg), "--dry-run", "--no-progress", "--json"]
    assert main([*base, "--to", out]) == 2
    assert "exactly-once output" in capsys.readouterr().err
    assert main([*base, "--to", out, "--allow-output-topic"]) == 2, "never an exactly-once output"
    assert "exactly-once output" in capsys.readouterr().err
    code, rep = _cli(capsys, *base)
    assert code == 0 and rep["by_topic"] == {src: 1}
