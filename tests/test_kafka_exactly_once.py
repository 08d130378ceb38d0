"""TransactionalWriter on a real Tansu broker: crash loop and zombie fencing.

What Tansu 0.6.0 cannot show (DESIGN.md §10), for every test here: its
`init_transactions()` makes a zombie's open transaction visible instead of
aborting it (Kafka aborts it: the writer's scan handles both, but only the
"visible" branch runs here), and its `abort_transaction()` can time out (the
writer then restarts cleanly, see tests/test_kafka_exactly_once_faults.py).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dataflows.connectors.kafka.common import to_out_message
from dataflows.connectors.kafka.sink import KafkaSinkSettings
from dataflows.connectors.kafka.transactional import (
    ProducerFencedError,
    TransactionalSettings,
    TransactionalWriter,
)
from dataflows.events import Event
from dataflows.retry import RetryPolicy
from tests.fixtures.kafka import read_topic
from tests.test_kafka_harness import crash_loop, event_id_counts, orders_crash_loop, produce_orders

SEED = 20261122


def _spec(bootstrap: str, src: str, out: str, dlq: str, prefix: str) -> dict[str, Any]:
    return {
        "source": {"brokers": [bootstrap], "topics": [src], "tail": False, "batch-size": 50},
        "sink": {
            "brokers": [bootstrap], "topic": out, "mode": "exactly-once",
            "transactional-id-prefix": prefix, "transaction-timeout": "60s",
        },
        "dlq": {"type": "kafka", "brokers": [bootstrap], "topic": dlq},
        "throttle_ms": 2,
        "epoch_ms": 150,
    }


@pytest.mark.timeout(200)
def test_crash_loop_exactly_once(kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path) -> None:
    """SIGKILL the flow >= 5 times at seeded random moments; read_committed output == input, once each.

    Broker behaviour proved: transactional commits are atomic and survive the producer's death,
    read_committed hides uncommitted records, a new producer with the same transactional.id
    fences the killed one. Tansu cannot show: the killed run's open transaction being aborted
    (Tansu makes it visible, so the skip-by-id path is what this test exercises)."""
    src, out, dlq = make_topic(2, "eo-in"), make_topic(2, "eo-out"), make_topic(1, "eo-dlq")
    expected = produce_orders(kafka_bootstrap, src, 3000, 2)  # 6 s of work > 5 kills x 1 s
    spec = _spec(kafka_bootstrap, src, out, dlq, f"crash-{random.Random(SEED).randrange(10**6)}")
    result = crash_loop(spec, tmp_path, kills=5, seed=SEED)
    assert result.kills == 5
    counts = event_id_counts(read_topic(kafka_bootstrap, out, partitions=2))
    missing = expected - set(counts)
    dupes = {k: c for k, c in counts.items() if c > 1}
    assert not missing, f"{len(missing)} lost, e.g. {sorted(missing)[:5]}"
    assert not dupes, f"{len(dupes)} duplicated, e.g. {list(dupes.items())[:5]}"
    assert set(counts) == expected


def _event(i: int) -> Event:
    return Event(key=f"k{i}", value={"n": i}, event_time_ms=i, event_id=f"test:{i}", source="test")


def _writer(bootstrap: str, topic: str, prefix: str, dead: list[Any]) -> TransactionalWriter:
    settings = TransactionalSettings(
        sink=KafkaSinkSettings(brokers=(bootstrap,), topic=topic, pipeline="t",
                               retry=RetryPolicy(max_attempts=1), delivery_timeout_s=5),
        partitions=1, transactional_id_prefix=prefix, commit_timeout_s=3, scan_timeout_s=10,
    )
    return TransactionalWriter(settings, dead.extend)


def test_zombie_is_fenced_and_replay_is_written_once(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    """A zombie's open transaction never doubles the output, whether the broker aborts it
    (Kafka) or makes it visible (Tansu): the new instance skips what it finds committed.

    Broker behaviour proved: `init_transactions()` with the same transactional.id fences the old
    producer (its later commit fails, `ProducerFencedError`). Tansu cannot show: the abort of the
    zombie's transaction (it makes it visible instead; on Kafka the scan finds nothing to skip)."""
    out = make_topic(1, "zombie")
    dead: list[Any] = []
    sink = _writer(kafka_bootstrap, out, "zombie-test", dead)
    first = sink.build_part("step", "00000", None)
    first.write_batch([_event(i) for i in range(5)])
    durable = first.snapshot()  # epoch 1 committed and durable
    assert durable == {"committed_end": {0: 5}, "pending_skip": {0: {}}, "partitions": {0: 1}}
    first.write_batch([_event(i) for i in range(5, 10)])  # epoch 2: open transaction, then "crash"
    first._producer.flush(5)

    second = sink.build_part("step", "00000", durable)  # fences the zombie
    second.write_batch([_event(i) for i in range(5, 15)])  # replay of epoch 2, then new records
    second.snapshot()
    with pytest.raises(ProducerFencedError):
        first.snapshot()
    counts = event_id_counts(read_topic(kafka_bootstrap, out, partitions=1))
    assert counts == Counter({f"test:{i}": 1 for i in range(15)})
    assert not dead


def test_replay_spanning_epochs_survives_a_second_crash(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    """The zombie's records are met over two epochs of the new run, which crashes in
    between: the ids not met yet travel in the snapshot (`pending_skip`).

    Broker behaviour proved: records committed after the durable snapshot stay readable
    read_committed from `committed_end`. Tansu cannot show: the zombie's open transaction being
    aborted (visible here, so the ids are found by the scan; on Kafka there is nothing to skip)."""
    out = make_topic(1, "span")
    sink = _writer(kafka_bootstrap, out, "span-test", [])
    first = sink.build_part("step", "00000", None)
    first.write_batch([_event(i) for i in range(3)])
    durable = first.snapshot()
    first.write_batch([_event(i) for i in range(3, 13)])  # open transaction, then kill -9
    first._producer.flush(5)

    second = sink.build_part("step", "00000", durable)
    second.write_batch([_event(i) for i in range(3, 8)])  # replay, first epoch only
    durable2 = second.snapshot()  # durable; then kill -9 again
    third = sink.build_part("step", "00000", durable2)
    third.write_batch([_event(i) for i in range(8, 16)])  # the rest of the replay, then new records
    third.close()
    counts = event_id_counts(read_topic(kafka_bootstrap, out, partitions=1))
    assert counts == Counter({f"test:{i}": 1 for i in range(16)})


def test_fresh_start_skips_ids_already_committed(kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    """No resume state (crash before the first durable snapshot): this writer's recent records
    (`fresh-scan-window`) are scanned and skipped.

    Broker behaviour proved: committed records carry their headers (`sf-event-id`, `sf-writer`)
    and the producer's timestamp. Tansu cannot show: ListOffsets by timestamp (it answers offset
    0 for any time, so the scan reads from the start and filters by timestamp)."""
    out = make_topic(1, "fresh")
    sink = _writer(kafka_bootstrap, out, "fresh-test", [])
    part = sink.build_part("step", "00000", None)
    part.write_batch([_event(i) for i in range(3)])
    part.snapshot()
    again = sink.build_part("step", "00000", None)
    assert again.skip == Counter({"test:0": 1, "test:1": 1, "test:2": 1})
    again.write_batch([_event(i) for i in range(4)])
    again.close()
    counts = event_id_counts(read_topic(kafka_bootstrap, out, partitions=1))
    assert counts == Counter({f"test:{i}": 1 for i in range(4)})


def test_a_snapshot_commits_the_workers_other_open_partitions_with_it(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    """Bytewax snapshots every partition of a worker at one epoch close: the first `snapshot()`
    commits the worker's other open transactions too, concurrently (their commit and read-back
    round trips overlap instead of queueing), and their own `snapshot()` reports the end.

    Broker behaviour proved: transactions of two producers commit independently and each is
    visible read_committed once committed."""
    out = make_topic(2, "eo-worker")
    dead: list[Any] = []
    sink = TransactionalWriter(replace(_writer(kafka_bootstrap, out, "worker-test", dead).settings, partitions=2),
                               dead.extend)
    p0, p1 = sink.build_part("step", "00000", None), sink.build_part("step", "00001", None)
    p0.write_batch([_event(i) for i in range(3)])
    p1.write_batch([_event(i) for i in range(3, 5)])
    s0 = p0.snapshot()
    assert len(read_topic(kafka_bootstrap, out, partitions=2, timeout_s=5)) == 5  # p1's records too
    s1 = p1.snapshot()
    assert (s0["committed_end"], s1["committed_end"]) == ({0: 3}, {1: 2})
    p0.close()
    p1.close()
    assert not dead


def test_message_keeps_key_value_and_event_id_header() -> None:
    msg = to_out_message(_event(7))
    assert msg.key == b"k7"
    assert b'"value":{"n":7}' in msg.value  # dataflows.json_codec: compact, keys sorted
    assert ("sf-event-id", b"test:7") in msg.headers


def test_orders_pipeline_crash_loop_exactly_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    """`python -m bytewax.run dataflows.pipelines.orders:flow -r DIR -s 1 -b 0`, Kafka -> Kafka
    exactly-once, SIGKILLed 5 times: the read_committed table changes equal those of the same
    pipeline run once in memory, each exactly once.

    Broker behaviour proved: as the crash loop above, through the real pipeline (source offsets
    in Bytewax state, transactional output). Tansu cannot show: a killed run's open transaction
    aborted by `init_transactions()` (it becomes visible), nor a slow abort."""
    run = orders_crash_loop(kafka_bootstrap, tmp_path, records=3000, kills=5, seed=SEED)
    assert run.result.kills == 5
    assert sum(run.want.values()) > 1000
    assert not run.lost, f"lost {sum(run.lost.values())}"
    assert not run.extra, f"duplicated or unexpected {sum(run.extra.values())}"


def test_items_without_event_id_get_a_deterministic_content_id() -> None:
    """E.g. a Session revision: the same content replayed -> the same id; another revision -> another."""
    from dataflows.patterns.sessions import Session

    s1 = Session("u1", 0, 10, 2, {"n": 2}, 1, "u1:0")
    s2 = Session("u1", 0, 12, 3, {"n": 3}, 2, "u1:0")
    a, b, c = to_out_message(s1), to_out_message(s1), to_out_message(s2)
    assert a.event_id == b.event_id and a.event_id.startswith("content:")
    assert c.event_id != a.event_id
    assert dict(a.headers)["sf-event-id"] == a.event_id.encode()


def test_the_first_build_warms_the_other_partitions_producers_and_they_claim_nothing(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    """The first `build_part` starts a producer for every other partition (so their later
    `init_transactions()` finds its connections up); a build takes its warm one, the first
    `snapshot()` drops those left over (partitions owned by another worker or process).

    Broker behaviour proved: a transactional producer claims its id only in `InitProducerId`
    (librdkafka sends it from `init_transactions()`, src/rdkafka_txnmgr.c): a second producer
    created with the same id, connected but not initialised, does not fence the first, which
    still commits; the same id initialised does fence it."""
    out = make_topic(3, "eo-warm")
    dead: list[Any] = []
    base = _writer(kafka_bootstrap, out, "warm-test", dead).settings
    sink = TransactionalWriter(replace(base, partitions=3), dead.extend)
    p0 = sink.build_part("step", "00000", None)
    assert sink._warm is not None and sorted(sink._warm) == [1, 2]
    p0.write_batch([_event(0)])
    # another process of the cluster (its own writer object) warms partition 0's id meanwhile
    other = TransactionalWriter(replace(base, partitions=3), dead.extend)
    p2_elsewhere = other.build_part("step", "00002", None)
    assert other._warm is not None and 0 in other._warm
    other._warm[0].poll(0.5)  # let it connect
    p0.snapshot()  # commits: the warm producer with p0's id claimed nothing
    assert sink._warm == {}  # dropped at the first snapshot
    p2_elsewhere.snapshot()
    assert other._warm == {}
    p1 = sink.build_part("step", "00001", None)  # built after the drop: a cold producer, same writer
    p1.write_batch([_event(1)])
    p1.close()
    p0.close()
    p2_elsewhere.close()
    assert event_id_counts(read_topic(kafka_bootstrap, out, partitions=3)) == Counter({"test:0": 1, "test:1": 1})
    assert not dead
