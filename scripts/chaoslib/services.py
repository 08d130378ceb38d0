"""The services a chaos invocation starts once and every run shares.

- the checkpoint store: moto's S3 server (in this process) behind the fault
  proxy (tests/fixtures/fault_proxy.py): the supervisor and the CLI talk real
  HTTP to the proxy; bucket `chaos`, one prefix per run;
- for the Kafka workloads, a Tansu broker with its default `memory://`
  storage, and (started the first time a run draws `broker-restart`) a second
  Tansu whose storage is a moto server of its own (bucket `tansu`), so that a
  restart keeps topics and records as a real broker's log does. Only runs that
  restart the broker use the durable one: Tansu's S3 storage is several times
  slower (and slower to release a killed producer's open transaction), which
  would make every run slow.

Every port is a free loopback port; `stop()` ends every process it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.fault_proxy import FaultProxy
from tests.fixtures.kafka import KafkaBroker, free_port
from tests.fixtures.s3 import MotoS3, make_bucket

__all__ = ["AWS_ENV", "BUCKET", "Services"]

AWS_ENV = {  # moto accepts any credentials; never real ones
    "AWS_ACCESS_KEY_ID": "chaos-access-key",
    "AWS_SECRET_ACCESS_KEY": "chaos-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
BUCKET = "chaos"


class Services:
    def __init__(self, work: Path, *, kafka: bool, seed: int) -> None:
        self.work, self.kafka, self.seed = work, kafka, seed
        self.moto = MotoS3()
        self.proxy = FaultProxy("http://127.0.0.1:1", seed=seed)
        self.brokers: dict[bool, KafkaBroker] = {}  # durable? -> broker
        self._broker_store: subprocess.Popen[bytes] | None = None
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
        self._broker_store = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                make_bucket(url, "tansu")
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
        """A broker restart is a controlled one (SIGTERM: Tansu finishes the requests in flight).
        A kill -9 of Tansu's S3 storage is not crash-consistent (its produce writes the watermark,
        the `meta.json` producer and transaction records and the batch object to S3 separately,
        tansu-storage/src/dynostore.rs), and the harness saw it leave transactions no client can
        end, holding a partition's last stable offset for ever. Kafka's log recovery truncates a
        torn batch and its transaction state is a log too, so that kill would test Tansu, not
        StreamForge. Abrupt broker loss is what `broker-pause` (SIGSTOP longer than every client
        timeout) models."""
        self.resume(broker)
        broker.stop(graceful=True)

    def start_broker(self, broker: KafkaBroker) -> None:
        if broker.proc is None:
            broker.start()

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
