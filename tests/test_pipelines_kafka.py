"""The orders pipeline with Kafka in and out (real Tansu broker): io.py dispatch end to end.

Generated order lines (malformed ones included) are produced to a 2-partition
topic keyed by order; the flow reads them with `source.type: kafka`, writes
the table with the exactly-once Kafka sink, the diffs to `sink.changes-topic`
and the dead letters to a Kafka DLQ topic. The final table read back (read_committed) must equal the
reference of tests/test_pipelines_orders.py.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from bytewax.testing import run_main
from confluent_kafka import Producer

from dataflows.config import Config, load_config
from dataflows.dead_letter import DeadLetter
from dataflows.generate import generate_orders
from dataflows.pipelines import orders
from tests.fixtures.kafka import read_topic
from tests.test_pipelines_orders import REPO, reference

_ORDER = re.compile(rb'"order_id":"(o-\d+)"')


def _produce(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for line in lines:
        m = _ORDER.search(line)
        producer.produce(topic, value=line, key=m.group(1) if m else b"?")
    assert producer.flush(20) == 0


def test_orders_pipeline_from_kafka_to_kafka_matches_the_reference(
    kafka_bootstrap: str, make_topic: Any
) -> None:
    """Broker behaviour proved: transactional (exactly-once) table output and a plain DLQ topic,
    read back read_committed, equal the reference. Tansu cannot show: zombie aborts by
    `init_transactions()` (made visible) and slow aborts (no fault here)."""
    gen = generate_orders(600, seed=21)
    src, table_topic, dlq_topic = make_topic(2, "orders-in"), make_topic(2, "orders-table"), make_topic(1, "dlq")
    changes_topic = make_topic(2, "orders-changes")
    _produce(kafka_bootstrap, src, gen.lines)
    base = load_config(REPO / "config" / "orders.yaml", environ={}).data
    base["source"] = {"type": "kafka", "brokers": [kafka_bootstrap], "topics": [src], "tail": False}
    base["sink"] = {"type": "kafka", "brokers": [kafka_bootstrap], "topic": table_topic,
                    "mode": "exactly-once", "transactional-id-prefix": f"sf-test-{table_topic}",
                    "changes-topic": changes_topic}
    base["dlq"] = {"type": "kafka", "brokers": [kafka_bootstrap], "topic": dlq_topic}
    run_main(orders.build_flow(Config(base, "kafka-test")))

    table: dict[str, Any] = {}
    for msg in read_topic(kafka_bootstrap, table_topic):
        change = json.loads(msg.value())
        if change["kind"] == "upsert":
            table[change["key"]] = change["value"]
        else:
            table.pop(change["key"], None)
    letters = [DeadLetter.from_json(m.value()) for m in read_topic(kafka_bootstrap, dlq_topic)]
    kinds = Counter(json.loads(m.value())["kind"] for m in read_topic(kafka_bootstrap, changes_topic))
    want_table, want_letters, want_kinds = reference(gen)
    assert table == want_table
    assert kinds == want_kinds
    assert Counter((d.error_code, d.stage) for d in letters) == want_letters
    assert all(d.event_id.startswith(f"kafka:{src}:") and "offset" in d.coords for d in letters)
