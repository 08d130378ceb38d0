"""The services a chaos invocation starts once and every run shares.

- the checkpoint store: moto's S3 server (in this process) behind the fault
  proxy (tests/fixtures/fault_proxy.py): the supervisor and the CLI talk real
  HTTP to the proxy; bucket `chaos`, one prefix per run;
- for the Kafka workloads, a Tansu broker whose storage is a second moto
  server (its own process, bucket `tansu`), so a broker restart keeps topics
  and records, as a real broker's log does (Tansu's default `memory://`
  storage would lose everything).

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

__all__ = ["AWS_ENV", "Services"]

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
        self.broker: KafkaBroker | None = None
        self._broker_store: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def bootstrap(self) -> str:
        assert self.broker is not None
        return self.broker.bootstrap

    def start(self) -> Services:
        os.environ.update(AWS_ENV)
        os.environ.pop("AWS_SESSION_TOKEN", None)
        self.moto.start()
        self.proxy = FaultProxy(self.moto.endpoint_url, seed=self.seed)
        self.proxy.start()
        make_bucket(self.moto.endpoint_url, BUCKET)
        if self.kafka:
            self._start_kafka()
        return self

    def _start_kafka(self) -> None:
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
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline or self._broker_store.poll() is not None:
                    raise RuntimeError(f"moto for the broker's storage did not start; {self.work}") from None
                time.sleep(0.1)
        self.broker = KafkaBroker(port=free_port(), log_path=self.work / "tansu.log",
                                  storage_engine="s3://tansu/",
                                  env={**AWS_ENV, "AWS_ENDPOINT": url, "AWS_ALLOW_HTTP": "true"})
        self.broker.start()

    # -- faults ----------------------------------------------------------------

    def pause_broker(self) -> None:
        assert self.broker is not None and self.broker.proc is not None
        self.broker.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume_broker(self) -> None:
        if self.broker is not None and self.broker.proc is not None and self.paused:
            self.broker.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop_broker(self) -> None:
        assert self.broker is not None
        self.resume_broker()
        self.broker.stop()

    def start_broker(self) -> None:
        assert self.broker is not None
        if self.broker.proc is None:
            self.broker.start()

    def heal(self) -> None:
        """Every fault off: store healthy, broker running and not paused."""
        self.proxy.set_mode("pass")
        self.resume_broker()
        if self.broker is not None and self.broker.proc is None:
            self.broker.start()

    def stop(self) -> None:
        if self.broker is not None:
            self.resume_broker()
            self.broker.stop()
        if self._broker_store is not None and self._broker_store.poll() is None:
            self._broker_store.kill()
            self._broker_store.wait(10)
        self.proxy.stop()
        self.moto.stop()
