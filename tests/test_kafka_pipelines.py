"""The orders pipeline Kafka -> Kafka (both sink modes) matches the same pipeline in memory."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from confluent_kafka import Producer

from dataflows.config import Config
from dataflows.dead_letter import DeadLetter
from dataflows.events import RawRecord, kafka_event_id
from dataflows.generate import generate_orders
from dataflows.pipelines.orders import build_flow
from tests.fixtures.kafka import read_topic


def _config(b: str, src: str, out: str, dlq: str, mode: str) -> dict[str, Any]:
    return {
        "pipeline": {"name": "orders"},
        "source": {"type": "kafka", "brokers": [b], "topics": [src], "tail": False},
        "sink": {"type": "kafka", "brokers": [b], "topic": out, "mode": mode,
                 "transactional-id-prefix": f"test.{out}"},
        "dlq": {"type": "kafka", "brokers": [b], "topic": dlq},
        "limits": {"max-record-bytes": "16KiB"},
        "parse": {"key-field": "order_id", "time-field": "ts", "op-field": "op", "id-field": "event_id"},
        "patterns": {"dedup": {"ttl": "1h"}},
    }


def _canon(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, default=str)


@pytest.mark.parametrize("mode", ["exactly-once", "at-least-once"])
def test_orders_pipeline_kafka_to_kafka(
    mode: str, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    b = kafka_bootstrap
    src, out, dlq = make_topic(1, "orders-in"), make_topic(2, "orders-out"), make_topic(1, "orders-dlq")
    lines = generate_orders(600, seed=7).lines
    p = Producer({"bootstrap.servers": b, "linger.ms": 5})
    for line in lines:
        p.produce(src, line, partition=0)
    assert p.flush(10) == 0

    run_main(build_flow(Config(_config(b, src, out, dlq, mode))))

    # the same pipeline in memory, fed the same records with the same event ids
    records = [RawRecord(line, kafka_event_id(src, 0, i), f"kafka:{src}",
                         coords={"topic": src, "partition": 0, "offset": i}) for i, line in enumerate(lines)]
    ref_out: list[Any] = []
    ref_dlq: list[DeadLetter] = []
    cfg = Config(_config(b, src, out, dlq, mode))
    run_main(build_flow(cfg, source=TestingSource(records), sink=TestingSink(ref_out),
                        dlq_sink=TestingSink(ref_dlq)))

    got = read_topic(b, out, partitions=2)
    assert Counter(_canon(json.loads(m.value())) for m in got) == Counter(_canon(asdict(c)) for c in ref_out)
    assert all(dict(m.headers())["sf-event-id"] == json.loads(m.value())["event_id"].encode() for m in got)
    # one key -> one output partition, in order
    parts_of_key: dict[bytes, set[int]] = {}
    for m in got:
        parts_of_key.setdefault(m.key(), set()).add(m.partition())
    assert all(len(ps) == 1 for ps in parts_of_key.values())

    letters = [DeadLetter.from_json(m.value()) for m in read_topic(b, dlq, partitions=1)]
    assert Counter((d.error_code, d.event_id) for d in letters) == Counter(
        (d.error_code, d.event_id) for d in ref_dlq
    )
    assert letters, "the generated data has malformed lines"
