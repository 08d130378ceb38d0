"""Broker outage and return, on a private Tansu broker (killed and restarted on its port).

Tansu keeps everything in memory, so a restart loses every topic and record.
What survives is the writer: records produced while the broker is away are
retried (backoff from the sink's RetryPolicy) and delivered once it is back
(Tansu re-creates the topic on the producer's metadata request); when it does
not come back within the retries, every record becomes a SINK_WRITE dead
letter, none is lost.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from dataflows import metrics
from dataflows.connectors.kafka.sink import KafkaSinkSettings, ReliableKafkaSink
from dataflows.dead_letter import DeadLetter
from dataflows.events import Event
from dataflows.retry import RetryPolicy
from tests.fixtures.kafka import KafkaBroker, create_topic, read_topic


def _events(n: int) -> list[Event]:
    return [Event(f"k{i}", {"n": i}, i, f"outage:{i}", "test") for i in range(n)]


def _sink(broker: KafkaBroker, topic: str, pipeline: str, attempts: int, dead: list[DeadLetter]) -> Any:
    settings = KafkaSinkSettings(
        brokers=(broker.bootstrap,), topic=topic, pipeline=pipeline,
        retry=RetryPolicy(max_attempts=attempts, initial_backoff_s=0.1, max_backoff_s=0.5, jitter=0.2),
        delivery_timeout_s=1.0, stage="outage.sink",
    )
    return ReliableKafkaSink(settings, dead.extend).build_part("outage.sink", "00000", None)


def _write(part: Any, events: list[Event]) -> None:
    part.write_batch(events)
    part.snapshot()  # epoch close: every delivery settled


def _retries(pipeline: str) -> float:
    return metrics.SINK_RETRIES.labels(pipeline=pipeline, step="outage.sink")._value.get()


def test_sink_retries_through_an_outage_and_delivers_after_return(private_kafka_broker: KafkaBroker) -> None:
    broker = private_kafka_broker
    topic = create_topic(broker.bootstrap, "outage-out", 1)
    dead: list[DeadLetter] = []
    part = _sink(broker, topic, "outage-return", attempts=30, dead=dead)
    _write(part, _events(3))  # broker up: delivered at once
    broker.stop()

    writer = threading.Thread(target=_write, args=(part, _events(10)[3:]))
    writer.start()
    deadline = time.monotonic() + 20
    while _retries("outage-return") < 1:  # the sink noticed the outage and is retrying
        assert time.monotonic() < deadline, "the sink never retried"
        time.sleep(0.05)
    broker.start()
    writer.join(timeout=60)
    assert not writer.is_alive()
    assert not dead
    keys = sorted(m.key() for m in read_topic(broker.bootstrap, topic, partitions=1))
    # records 0-2 lived in the old (memory-only) broker; 3-9 were delivered after the return
    assert keys == sorted(f"k{i}".encode() for i in range(3, 10))


def test_sink_dead_letters_everything_when_the_broker_stays_away(private_kafka_broker: KafkaBroker) -> None:
    broker = private_kafka_broker
    topic = create_topic(broker.bootstrap, "outage-dead", 1)
    dead: list[DeadLetter] = []
    part = _sink(broker, topic, "outage-dead", attempts=3, dead=dead)
    broker.stop()
    _write(part, _events(4))
    assert sorted(d.event_id for d in dead) == [f"outage:{i}" for i in range(4)]
    assert {d.error_code for d in dead} == {"SINK_WRITE"}
    assert {d.attempts for d in dead} == {3}
    assert all(d.key == f"k{d.event_id.split(':')[1]}".encode() for d in dead)
    assert _retries("outage-dead") == 2 * 4
