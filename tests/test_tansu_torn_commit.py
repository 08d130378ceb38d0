"""Tansu 0.6.0 with S3 storage: a broker restart during a commit can hang a partition for ever.

This is a test of the broker, not of StreamForge. It reproduces, deterministically, the one
failure the chaos harness still reports (`scripts/chaos.py --runs 100 --seed 1`: a
`kafka-exactly-once` run with `broker-restart` that never ends), and pins down why it is
Tansu's and what StreamForge does about it.

Tansu's commit (`txn_end` in tansu-storage/src/dynostore.rs, v0.6.0) is three steps, each its
own S3 request: (1) put `meta.json` with the transaction in `PrepareCommit`, (2) append the
commit marker batch to every partition of the transaction (`.../records/<offset>.batch`),
(3) put `meta.json` with the transaction `Committed`. Tansu's shutdown is no barrier between
them: on SIGTERM its accept loop breaks and the connection tasks' JoinSet is dropped, which
aborts every request in flight (tansu-broker/src/broker.rs, `listen`). A transaction cut after
step 1 stays `PrepareCommit` in `meta.json`. When the producer comes back,
`init_producer` rolls back only a transaction in `Begin`; one in `PrepareCommit` is left as it
is and the epoch is bumped. The last stable offset (`offset_stage`: the lowest start of any
transaction neither `Committed` nor `Aborted`) then stays at that transaction's first record
until some other transaction that wrote to the same partition ends (`overlapping_transactions`).

Kafka cannot get there: its transaction coordinator keeps its state in the replicated
`__transaction_state` log, completes a `PrepareCommit` by writing the markers after a restart,
and answers InitProducerId with CONCURRENT_TRANSACTIONS until it has
(core/src/main/scala/kafka/coordinator/transaction/TransactionCoordinator.scala,
`handleInitProducerId`); an open transaction is aborted after `transaction.timeout.ms`.

What StreamForge does on that partition: its TransactionalWriter never writes past a tail it
cannot read. The start-time scan and every commit's read-back stop at the last stable offset,
so the writer waits for `transaction-timeout` and then restarts (CommitNotVisibleError /
TailScanError) rather than write a record twice (tests/test_kafka_exactly_once_faults.py,
`test_commit_hidden_behind_an_open_transaction_is_not_recorded`). On this broker that is a
restart loop: a liveness failure of the broker, with nothing lost or duplicated.

Only Tansu behaves like this; no other Kafka broker can be installed here (DESIGN.md §9).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from scripts.chaoslib.services import TANSU_META, torn_commits
from tests.fixtures.fault_proxy import FaultProxy
from tests.fixtures.kafka import KafkaBroker, create_topic, free_port
from tests.fixtures.s3 import MotoS3, make_bucket

RECORDS = 3
# the commit marker's batch object: tansu-storage/src/dynostore.rs `produce`,
# "clusters/{cluster}/topics/{topic}/partitions/{partition:0>10}/records/{offset:0>20}.batch"
MARKER_PUT = r"^PUT /[^/?]+/clusters/[^/]+/topics/{topic}/partitions/0000000000/records/[0-9]{{20}}\.batch"

PRODUCER = textwrap.dedent("""
    import sys
    from confluent_kafka import Producer
    bootstrap, topic, txn_id, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(n):
        p.produce(topic, value=b"r%d" % i, partition=0)
    p.flush(30)
    print("FLUSHED", flush=True)
    sys.stdin.readline()          # the test holds the store's marker write, then says go
    p.commit_transaction(120)     # never returns: the process is killed in the middle
""")


@pytest.fixture
def s3_tansu(moto_s3: MotoS3, tmp_path: Path) -> Iterator[tuple[KafkaBroker, FaultProxy]]:
    """Tansu on S3 storage (a fresh bucket on the session moto), through a fault proxy."""
    proxy = FaultProxy(moto_s3.endpoint_url)
    proxy.start()
    bucket = make_bucket(moto_s3.endpoint_url, f"tansu-{uuid.uuid4().hex[:8]}")
    broker = KafkaBroker(port=free_port(), log_path=tmp_path / "tansu.log", storage_engine=f"s3://{bucket}/",
                         env={"AWS_ENDPOINT": proxy.endpoint_url, "AWS_ALLOW_HTTP": "true"})
    broker.start()
    try:
        yield broker, proxy
    finally:
        proxy.set_mode("pass")
        broker.stop()
        proxy.stop()


def _read(bootstrap: str, topic: str, *, read_committed: bool, until_records: int | None = None) -> tuple[int, int]:
    """(records read, position) of partition 0 from its start: for read_committed, when it
    reports its end (librdkafka's end for read_committed is the last stable offset); else once
    `until_records` records came."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:6]}",
                         "enable.partition.eof": True, "enable.auto.commit": False,
                         "isolation.level": "read_committed" if read_committed else "read_uncommitted"})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    read, deadline = 0, time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            err = msg.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                if until_records is None:
                    return read, int(msg.offset())
                continue
            assert err is None, err
            read += 1
            if until_records is not None and read >= until_records:
                return read, int(msg.offset()) + 1
        raise AssertionError(f"partition 0 of {topic}: {read} record(s) and no end within 60 s")
    finally:
        consumer.close()


def test_a_restart_between_the_commit_steps_hangs_the_partition_on_tansu(
        s3_tansu: tuple[KafkaBroker, FaultProxy], moto_s3: MotoS3) -> None:
    broker, proxy = s3_tansu
    topic = create_topic(broker.bootstrap, f"torn-{uuid.uuid4().hex[:8]}")
    txn_id = f"torn-{uuid.uuid4().hex[:8]}"
    client = subprocess.Popen([sys.executable, "-c", PRODUCER, broker.bootstrap, topic, txn_id, str(RECORDS)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "FLUSHED"
        # step 2 of the commit, the marker batch, waits in the proxy; step 1 has been stored
        proxy.set_mode("delay", delay_s=600, match=MARKER_PUT.format(topic=topic))
        client.stdin.write("go\n")
        client.stdin.flush()
        deadline = time.monotonic() + 60
        while proxy.faulted_by_mode["delay"] < 1:
            assert time.monotonic() < deadline, "the commit never reached its marker write"
            assert client.poll() is None, "the producer ended before its commit reached the store"
            time.sleep(0.05)
    finally:
        client.kill()  # the writer's process dies with its commit in flight (kill -9 in the chaos runs)
        client.wait(10)
    broker.stop(graceful=True)  # SIGTERM, as the chaos harness's broker-restart
    proxy.set_mode("pass")
    broker.start()

    # The same transactional.id comes back: on Kafka, InitProducerId completes the prepared commit first.
    fresh = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": txn_id})
    fresh.init_transactions(60)
    del fresh

    assert _read(broker.bootstrap, topic, read_committed=False, until_records=RECORDS) == (RECORDS, RECORDS), \
        "the transaction's records are in the log"
    committed, last_stable = _read(broker.bootstrap, topic, read_committed=True)
    # Tansu: the transaction is left PrepareCommit, so the partition's stable end stays at its first record,
    # and the chaos harness's diagnostic names it from the broker's own state
    bucket = (broker.storage_engine or "")[len("s3://"):].strip("/")
    meta = boto3.client("s3", endpoint_url=moto_s3.endpoint_url, region_name="us-east-1").get_object(
        Bucket=bucket, Key=TANSU_META)["Body"].read()
    assert torn_commits(json.loads(meta), topic) == [f"{txn_id} epoch 0 PrepareCommit (p0 0..{RECORDS})"]
    assert (committed, last_stable) == (0, 0), (
        f"read_committed read {committed} record(s) to offset {last_stable}: Tansu completed the torn "
        "commit; if a Tansu upgrade fixed this, the chaos harness's stuck broker-restart runs are gone too")
