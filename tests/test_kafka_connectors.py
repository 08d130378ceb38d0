"""Kafka source, at-least-once sink and DLQ on a real Tansu broker; retry policy."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from bytewax.testing import run_main
from confluent_kafka import Producer

from dataflows.config import Config, ConfigError
from dataflows.connectors.kafka import kafka_sink_from_config, kafka_source_from_config
from dataflows.connectors.kafka.common import KafkaStartError
from dataflows.dead_letter import DeadLetter
from dataflows.events import Event
from dataflows.retry import RetryExhausted, RetryPolicy, retry_policy_from_config
from tests.fixtures.kafka import free_port, read_topic
from tests.test_kafka_harness import build, event_id_counts


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for key, value in records:
        p.produce(topic, value, key, partition=0)
    assert p.flush(10) == 0


def test_poison_messages_reach_the_dlq_with_headers(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    src, out, dlq = make_topic(1, "poison-in"), make_topic(1, "poison-out"), make_topic(1, "poison-dlq")
    huge = json.dumps({"id": "big", "pad": "x" * 100_000}).encode()
    _produce(kafka_bootstrap, src, [
        (b"k1", b'{"id": "a", "n": 1}'),          # good
        (b"k2", b"{not json"),                    # MALFORMED_JSON
        (b"k3", b"[1, 2, 3]"),                    # SCHEMA (not an object)
        (b"k4", huge),                            # OVERSIZED (limit 64 KiB)
        (None, b'{"n": 2}'),                      # null key, no id -> MISSING_KEY
        (None, b'{"id": "b", "n": 3}'),           # null Kafka key but a good record
        (b"k7", b"\xff\xfe"),                     # INVALID_UTF8
    ])
    spec = {
        "source": {"brokers": [kafka_bootstrap], "topics": [src], "tail": False},
        "sink": {"brokers": [kafka_bootstrap], "topic": out, "mode": "at-least-once"},
        "dlq": {"type": "kafka", "brokers": [kafka_bootstrap], "topic": dlq},
    }
    run_main(build(spec, "poison"))

    good = read_topic(kafka_bootstrap, out, partitions=1)
    assert sorted(m.key() for m in good) == [b"a", b"b"]
    assert set(event_id_counts(good)) == {f"kafka:{src}:0:0", f"kafka:{src}:0:5"}

    letters = read_topic(kafka_bootstrap, dlq, partitions=1)
    by_offset = {}
    for m in letters:
        dl = DeadLetter.from_json(m.value())
        headers = dict(m.headers())
        assert headers["__connect.errors.topic"] == src.encode()
        assert headers["__connect.errors.offset"] == str(dl.coords["offset"]).encode()
        assert headers["__connect.errors.stage"] == b"poison.parse"
        assert headers["__connect.errors.exception.class.name"]
        assert m.key() == dl.key  # original key preserved
        by_offset[dl.coords["offset"]] = dl
    assert {o: d.error_code for o, d in by_offset.items()} == {
        1: "MALFORMED_JSON", 2: "SCHEMA", 3: "OVERSIZED", 4: "MISSING_KEY", 6: "INVALID_UTF8",
    }
    assert by_offset[3].payload == huge and by_offset[6].payload == b"\xff\xfe"
    assert by_offset[4].key is None and by_offset[1].key == b"k2"
    assert by_offset[1].event_id == f"kafka:{src}:0:1"


def test_bad_broker_or_missing_topic_fails_at_start(kafka_bootstrap: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(KafkaStartError, match="did not answer metadata"):
        kafka_source_from_config(Config({"brokers": [dead], "topics": ["x"], "metadata-timeout": "1s"}), "p")
    with pytest.raises(KafkaStartError, match="does not exist"):
        kafka_sink_from_config(Config({"brokers": kafka_bootstrap, "topic": "no-such-topic-zz"}), "p")
    with pytest.raises(ConfigError, match="mode"):
        kafka_sink_from_config(Config({"brokers": kafka_bootstrap, "topic": "t", "mode": "twice"}), "p")


def test_sink_dead_letters_a_record_kafka_refuses(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    """A permanent produce error (record over message.max.bytes) -> SINK_WRITE in the DLQ topic."""
    out, dlq = make_topic(1, "refuse-out"), make_topic(1, "refuse-dlq")
    cfg = Config({"sink": {"brokers": [kafka_bootstrap], "topic": out},
                  "dlq": {"type": "kafka", "brokers": [kafka_bootstrap], "topic": dlq}})
    sink = kafka_sink_from_config(cfg.section("sink"), "refuse")
    part = sink.build_part("refuse.out", "00000", None)  # type: ignore[attr-defined]
    ok = Event("k1", {"n": 1}, 1, "e:1", "test")
    big = Event("k2", {"pad": "x" * 2_000_000}, 2, "e:2", "test")
    part.write_batch([ok, big])
    part.snapshot()
    assert [m.key() for m in read_topic(kafka_bootstrap, out, partitions=1)] == [b"k1"]
    (letter,) = read_topic(kafka_bootstrap, dlq, partitions=1)
    dl = DeadLetter.from_json(letter.value())
    assert dl.error_code == "SINK_WRITE" and dl.event_id == "e:2" and dl.key == b"k2"
    assert json.loads(dl.payload)["value"]["pad"] == "x" * 2_000_000
    assert dl.coords["topic"] == out and letter.key() == b"k2"


def test_retry_policy_backoff_is_exponential_capped_and_jittered() -> None:
    p = RetryPolicy(max_attempts=6, initial_backoff_s=0.1, max_backoff_s=0.5, multiplier=2, jitter=0.5)
    delays = list(p.delays())
    assert len(delays) == 5
    for d, base in zip(delays, [0.1, 0.2, 0.4, 0.5, 0.5], strict=True):
        assert base * 0.5 <= d <= base
    flat = list(RetryPolicy(4, 1.0, 3.0, 3.0, 0.0).delays())
    assert flat == [1.0, 3.0, 3.0]


def test_retry_policy_call_retries_transient_only() -> None:
    calls: list[int] = []
    slept: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("later")
        return "ok"

    p = RetryPolicy(5, 0.01, 0.02, 2, 0)
    assert p.call(flaky, lambda e: isinstance(e, TimeoutError), sleep=slept.append) == "ok"
    assert slept == [0.01, 0.02]
    with pytest.raises(ValueError):
        p.call(lambda: (_ for _ in ()).throw(ValueError("bad")), lambda e: isinstance(e, TimeoutError))
    with pytest.raises(RetryExhausted) as info:
        RetryPolicy(2, 0, 0, 1, 0).call(lambda: (_ for _ in ()).throw(TimeoutError("x")), sleep=slept.append)
    assert info.value.attempts == 2


def test_retry_policy_from_config() -> None:
    cfg = Config({"retry": {"max-attempts": 3, "initial-backoff": "50ms", "max-backoff": "2s",
                            "multiplier": 3, "jitter": 0.1}})
    p = retry_policy_from_config(cfg)
    assert (p.max_attempts, p.initial_backoff_s, p.max_backoff_s, p.multiplier, p.jitter) == (3, 0.05, 2.0, 3.0, 0.1)
    with pytest.raises(ConfigError, match="jitter"):
        retry_policy_from_config(Config({"retry": {"jitter": 2}}))
    with pytest.raises(ConfigError, match="max-attempts"):
        retry_policy_from_config(Config({"retry": {"max-attempts": 0}}))


def _read_all(part: Any) -> list[Any]:
    """Every item of a bounded (`tail: false`) source partition, until it ends (with a deadline)."""
    items: list[Any] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            items.extend(part.next_batch())
        except StopIteration:
            return items
    raise AssertionError(f"the partition did not end; read {len(items)}")


def test_source_partition_resumes_at_the_state_offset_and_converts_messages(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    """The source's own partition keeps Bytewax's KafkaSource state (the next offset, an int: a
    state either wrote loads in the other) and builds each RawRecord straight from the message;
    the latency histogram is observed once per batch."""
    from dataflows import metrics
    from dataflows.connectors.kafka.common import EVENT_ID_HEADER, REPLAY_HEADER
    from dataflows.connectors.kafka.source import RawRecordKafkaSource

    src = make_topic(1, "src-resume")
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(5):
        p.produce(src, f"v{i}".encode(), f"k{i}".encode(), partition=0)
    p.produce(src, b"v5", None, partition=0, headers=[(REPLAY_HEADER, b"t1"), (EVENT_ID_HEADER, b"kafka:x:0:9")])
    assert p.flush(10) == 0
    source = RawRecordKafkaSource([kafka_bootstrap], [src], pipeline="p-resume", tail=False)
    assert source.list_parts() == [f"0-{src}"]
    labels = {"pipeline": "p-resume", "source": f"kafka:{src}"}
    part = source.build_part("in", f"0-{src}", 2)  # resume: the next offset to read is 2
    records = _read_all(part)
    assert part.snapshot() == 6
    part.close()
    assert [r.event_id for r in records] == [f"kafka:{src}:0:{o}" for o in (2, 3, 4)] + ["kafka:x:0:9"]
    first = records[0]
    assert (first.payload, first.key, first.source, dict(first.coords)) == (
        b"v2", b"k2", f"kafka:{src}", {"topic": src, "partition": 0, "offset": 2})
    assert first.timestamp_ms is not None and first.headers == ()
    assert records[-1].key is None and dict(records[-1].headers)[REPLAY_HEADER] == b"t1"
    observed = metrics.REGISTRY.get_sample_value("streamforge_source_latency_ms_count", labels) or 0
    assert 1 <= observed < len(records)  # one observation per batch, not per record


@pytest.mark.timeout(30)
def test_take_available_returns_what_is_queued_without_waiting_out_its_timeout(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    """`take_available(c, n, timeout)` returns the queued messages (fewer than n) at once;
    `consume(n, timeout)` waits the whole timeout for a partial batch (librdkafka
    `rd_kafka_q_serve_rkmessages`, src/rdkafka_queue.c), which the 60 s timeout here would
    turn into a test timeout. With nothing queued it returns [] after the timeout."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from dataflows.connectors.kafka.common import take_available

    topic = make_topic(1, "take")
    _produce(kafka_bootstrap, topic, [(None, f"v{i}".encode()) for i in range(5)])
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "take-test", "enable.partition.eof": True})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got: list[Any] = []
        while not any(m.error() is not None and m.error().code() == KafkaError._PARTITION_EOF for m in got):
            got += take_available(c, 1000, 60)  # the records, then the end of partition
        assert [m.value() for m in got if m.error() is None] == [f"v{i}".encode() for i in range(5)]
        assert take_available(c, 1000, 0.2) == []  # nothing more: [] once the timeout is out
    finally:
        c.close()
