"""The services a chaos invocation starts once and every run shares.

- the checkpoint store: moto's S3 server (in this process) behind the fault
  proxy (tests/fixtures/fault_proxy.py): the supervisor and the CLI talk real
  HTTP to the proxy; bucket `chaos`, one prefix per run;
- for the Kafka workloads, a Tansu broker with its default `memory://`
  storage, and (started the first time a run draws `broker-restart`) a second
  Tansu whose storage is a moto server of its own (bucket `tansu`; with S3's
  atomic conditional writes, `tests.fixtures.s3.atomic_conditional_writes`, which
  Tansu's `meta.json` updates rely on), so that a restart keeps topics and
  records as a real broker's log does. Only runs that
  restart the broker use the durable one: Tansu's S3 storage is several times
  slower (and slower to release a killed producer's open transaction), which
  would make every run slow.

Every port is a free loopback port; `stop()` ends every process it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.fixtures.fault_proxy import FaultProxy
from tests.fixtures.kafka import KafkaBroker, free_port
from tests.fixtures.s3 import MotoS3, make_bucket

__all__ = ["AWS_ENV", "BUCKET", "TANSU_META", "Services", "torn_commits"]

AWS_ENV = {  # moto accepts any credentials; never real ones
    "AWS_ACCESS_KEY_ID": "chaos-access-key",
    "AWS_SECRET_ACCESS_KEY": "chaos-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
BUCKET = "chaos"
REPO = Path(__file__).resolve().parents[2]


TANSU_META = "clusters/tansu_cluster/meta.json"  # tansu-storage/src/dynostore.rs, default cluster id


def torn_commits(meta: dict[str, Any], topic: str) -> list[str]:
    """Commits to `topic` that a broker restart left torn, from Tansu's `meta.json`
    (tansu-storage/src/dynostore.rs `Meta.transactions`: id -> producer, epochs -> state,
    produces): an epoch still `PrepareCommit` / `PrepareAbort` although its transactional id
    has a later epoch. Tansu's `init_producer` rolls back only an epoch in `Begin`, so such a
    transaction holds the partition's last stable offset until another transaction on that
    partition ends; on Kafka, InitProducerId completes it first."""
    torn = []
    for txn_id, txn in (meta.get("transactions") or {}).items():
        epochs = {int(e): d for e, d in (txn.get("epochs") or {}).items()}
        for epoch, detail in sorted(epochs.items()):
            ranges = (detail.get("produces") or {}).get(topic) or {}
            if detail.get("state") in ("PrepareCommit", "PrepareAbort") and epoch < max(epochs) and ranges:
                spans = ", ".join(f"p{p} {r['offset_start']}..{r['offset_end']}" for p, r in sorted(ranges.items()) if r)
                torn.append(f"{txn_id} epoch {epoch} {detail['state']} ({spans})")
    return torn


class Services:
    def __init__(self, work: Path, *, kafka: bool, seed: int) -> None:
        self.work, self.kafka, self.seed = work, kafka, seed
        self.moto = MotoS3()
        self.proxy = FaultProxy("http://127.0.0.1:1", seed=seed)
        self.brokers: dict[bool, KafkaBroker] = {}  # durable? -> broker
        self._broker_store: subprocess.Popen[bytes] | None = None
        self._broker_store_url: str | None = None
        self._paused: set[int] = set()

    def start(self) -> Services:
        os.environ.update(AWS_ENV)
        os.environ.pop("AWS_SESSION_TOKEN", None)
        self.moto.start()
        self.proxy = FaultProxy(self.moto.endpoint_url, seed=self.seed)
        self.proxy.start()
        make_bucket(self.moto.endpoint_url, BUCKET)
        return self

    def broker(self, *, durable: bool) -> KafkaBroker:
        """The memory broker, or the durable one; started on first use."""
        if durable not in self.brokers:
            env, storage = (self._start_broker_store(), "s3://tansu/") if durable else (None, None)
            broker = KafkaBroker(port=free_port(), log_path=self.work / f"tansu-{'s3' if durable else 'mem'}.log",
                                 storage_engine=storage, env=env)
            broker.start()
            self.brokers[durable] = broker
        return self.brokers[durable]

    def _start_broker_store(self) -> dict[str, str]:
        port = free_port()
        log = (self.work / "broker-store.log").open("ab")
        # moto with S3's atomic conditional writes: Tansu updates its meta.json by If-Match
        self._broker_store = subprocess.Popen(
            [sys.executable, "-m", "tests.fixtures.s3", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        log.close()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                make_bucket(url, "tansu")
                self._broker_store_url = url
                return {**AWS_ENV, "AWS_ENDPOINT": url, "AWS_ALLOW_HTTP": "true"}
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline or self._broker_store.poll() is not None:
                    raise RuntimeError(f"moto for the broker's storage did not start; {self.work}") from None
                time.sleep(0.1)

    # -- faults ----------------------------------------------------------------

    def pause(self, broker: KafkaBroker) -> None:
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)
        self._paused.add(broker.port)

    def resume(self, broker: KafkaBroker) -> None:
        if broker.port in self._paused and broker.proc is not None:
            broker.proc.send_signal(signal.SIGCONT)
        self._paused.discard(broker.port)

    def stop_broker(self, broker: KafkaBroker) -> None:
        """A broker restart: SIGTERM, then (`start_broker`) the same storage again. Tansu's
        SIGTERM is no barrier between the steps of a request: its accept loop breaks and the
        connection tasks' JoinSet is dropped, aborting whatever is in flight
        (tansu-broker/src/broker.rs `listen`); its S3 storage writes a commit as separate
        objects (tansu-storage/src/dynostore.rs `txn_end`), so a restart can leave a commit torn
        (see `torn_commits`; reproduced deterministically by tests/test_tansu_torn_commit.py).
        A kill -9 adds torn produces (watermark, `meta.json` and batch object written
        separately). Kafka's log recovery and its `__transaction_state` log make both safe, so
        a kill -9 of Tansu would test Tansu, not StreamForge; abrupt broker loss is what
        `broker-pause` (SIGSTOP longer than every client timeout) models."""
        self.resume(broker)
        broker.stop(graceful=True)

    def start_broker(self, broker: KafkaBroker) -> None:
        if broker.proc is None:
            broker.start()

    def torn_commits(self, topic: str) -> list[str]:
        """`torn_commits` of the durable broker's `meta.json`, for `topic`."""
        if self._broker_store_url is None:
            return []
        import boto3  # the harness's own moto: no credentials beyond AWS_ENV

        body = boto3.client("s3", endpoint_url=self._broker_store_url, region_name="us-east-1").get_object(
            Bucket="tansu", Key=TANSU_META)["Body"].read()
        return torn_commits(json.loads(body), topic)

    def heal(self) -> None:
        """Every fault off: store healthy, brokers running and not paused."""
        self.proxy.set_mode("pass")
        for broker in self.brokers.values():
            self.resume(broker)
            self.start_broker(broker)

    def stop(self) -> None:
        for broker in self.brokers.values():
            self.resume(broker)
            broker.stop()
        if self._broker_store is not None and self._broker_store.poll() is None:
            self._broker_store.kill()
            self._broker_store.wait(10)
        self.proxy.stop()
        self.moto.stop()
