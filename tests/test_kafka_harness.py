"""Kafka test harness: a small Kafka -> parse -> Kafka flow, run as a killable process.

Used by tests/test_kafka_exactly_once.py (CI crash loop) and
scripts/crashloop_kafka.py (long crash loop). The flow:

    kafka source -> split consumer errors -> parse JSON (key field "id")
      -> throttle (sleep per record, so a kill lands mid-run) -> kafka sink
    dead letters (source + parse) -> kafka DLQ

Run one process: `python -m tests.test_kafka_harness SPEC.json RECOVERY_DIR`
(epochs of `epoch_ms`, recovery in RECOVERY_DIR, backup interval 0).
SPEC keys: source, sink, dlq (config sections), throttle_ms, max_record_bytes,
dedup (deduplicate by event id before the sink), epoch_ms, ready_file.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import yaml
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig
from confluent_kafka import Producer

from dataflows.config import Config
from dataflows.connectors.kafka import (
    kafka_dlq_sink_from_config,
    kafka_sink_from_config,
    kafka_source_from_config,
)
from dataflows.errors import split_dead_letters
from dataflows.events import Event, RawRecord, kafka_event_id
from dataflows.json_codec import to_jsonable
from dataflows.parse import parse_events
from dataflows.pipelines.io import write_output

REPO = Path(__file__).resolve().parents[1]


def build(spec: dict[str, Any], name: str = "kharness") -> Dataflow:
    flow = Dataflow(name)
    source = kafka_source_from_config(Config(spec["source"], "spec#source"), name)
    raw, src_dlq = split_dead_letters("src-split", op.input("in", flow, source))
    events, bad = parse_events(
        "parse", raw, pipeline=name, key_field="id", time_field=None,
        max_record_bytes=int(spec.get("max_record_bytes", 64 * 1024)),
    )
    throttle_s = float(spec.get("throttle_ms", 0)) / 1000
    ready = Path(spec["ready_file"]) if spec.get("ready_file") else None

    def slow(e: Event) -> Event:
        if ready is not None and not ready.exists():
            ready.touch()  # tells the crash loop that records flow
        if throttle_s:
            time.sleep(throttle_s)
        return e

    if spec.get("dedup"):
        from dataflows.patterns.dedup import deduplicate

        events = deduplicate("dedup", events, ttl_ms=3_600_000, pipeline=name, key=lambda e: e.event_id)
    whole = Config(spec, "spec")  # the sink's own dead letters go to the spec's `dlq`
    write_output("out", op.map("throttle", events, slow), kafka_sink_from_config(whole.section("sink"), name))
    dlq = op.merge("dlqs", src_dlq, bad)
    write_output("dlq", dlq, kafka_dlq_sink_from_config(whole.section("dlq"), name))
    return flow


def run_process(spec_path: str, recovery_dir: str) -> None:
    from bytewax._bytewax import cli_main

    spec = json.loads(Path(spec_path).read_text())
    cli_main(
        build(spec),
        epoch_interval=timedelta(milliseconds=int(spec.get("epoch_ms", 200))),
        recovery_config=RecoveryConfig(recovery_dir, backup_interval=timedelta(0)),
    )


def produce_orders(bootstrap: str, topic: str, n: int, partitions: int) -> set[str]:
    """n JSON orders, round-robin over partitions; their expected event ids."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    offsets: dict[int, int] = Counter()
    ids: set[str] = set()
    for i in range(n):
        part = i % partitions
        value = json.dumps({"id": f"o{i}", "amount": i}).encode()
        producer.produce(topic, value, f"o{i}".encode(), partition=part)
        ids.add(kafka_event_id(topic, part, offsets[part]))
        offsets[part] += 1
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    return ids


def init_recovery(recovery_dir: Path, partitions: int = 1) -> None:
    recovery_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(recovery_dir), str(partitions)],
        check=True, capture_output=True,
    )


@dataclass
class CrashLoopResult:
    kills: int = 0
    runs: int = 0
    exit_codes: list[int] = field(default_factory=list)


def crash_loop(
    spec: dict[str, Any],
    workdir: Path,
    *,
    kills: int,
    seed: int,
    kill_after_s: tuple[float, float] = (0.05, 1.0),
    final_timeout_s: float = 120.0,
    log: Any = None,
) -> CrashLoopResult:
    """The harness flow in a crash loop (see `kill_loop`)."""
    spec_path = workdir / "spec.json"
    ready = workdir / "ready"
    spec_path.write_text(json.dumps({**spec, "ready_file": str(ready)}))
    recovery = workdir / "recovery"
    init_recovery(recovery)
    cmd = [sys.executable, "-m", "tests.test_kafka_harness", str(spec_path), str(recovery)]
    return kill_loop(cmd, workdir, ready, kills=kills, seed=seed, kill_after_s=kill_after_s,
                     final_timeout_s=final_timeout_s, log=log)


def kill_loop(
    cmd: list[str],
    workdir: Path,
    ready: Path,
    *,
    kills: int,
    seed: int,
    kill_after_s: tuple[float, float] = (0.05, 1.0),
    final_timeout_s: float = 120.0,
    env: dict[str, str] | None = None,
    log: Any = None,
) -> CrashLoopResult:
    """Run `cmd`, SIGKILL it `kills` times, restarting it each time, then let it finish.

    Each kill lands a seeded random `kill_after_s` after the run's first record
    went through the flow (the flow touches `ready`), so every kill hits a
    running flow, with open transactions, commits and snapshots in flight.
    """
    rng = random.Random(seed)
    result = CrashLoopResult()
    stderr_path = workdir / "stderr.log"
    while True:
        ready.unlink(missing_ok=True)
        with stderr_path.open("ab") as err:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, env=env)
        result.runs += 1
        if result.kills < kills and _wait_ready(proc, ready, final_timeout_s):
            delay = rng.uniform(*kill_after_s)
            try:
                code = proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                result.kills += 1
                if log:
                    log(f"kill {result.kills} after {delay:.2f}s")
                continue
        else:
            code = proc.wait(timeout=final_timeout_s)
        result.exit_codes.append(code)
        if code != 0:
            tail = stderr_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"flow process failed with exit code {code}:\n{tail}")
        return result


def throttle_hook(event: Event) -> Event:
    """A pipeline `patterns.enrich` hook for crash loops: marks progress, slows down.

    Touches `$SF_TEST_READY_FILE` on the first event, sleeps
    `$SF_TEST_THROTTLE_MS` per event.
    """
    ready = os.environ.get("SF_TEST_READY_FILE")
    if ready and not os.path.exists(ready):
        Path(ready).touch()
    time.sleep(float(os.environ.get("SF_TEST_THROTTLE_MS", "0")) / 1000)
    return event


def _wait_ready(proc: subprocess.Popen[bytes], ready: Path, timeout_s: float) -> bool:
    """Until the flow signals records or exits; True if it is running with records."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def orders_config(b: str, src: str, out: str, dlq: str) -> dict[str, Any]:
    """The orders pipeline, Kafka -> Kafka exactly-once, with the throttle hook."""
    return {
        "pipeline": {"name": "orders"},
        "source": {"type": "kafka", "brokers": [b], "topics": [src], "tail": False, "batch-size": 100},
        "sink": {"type": "kafka", "brokers": [b], "topic": out, "mode": "exactly-once",
                 "transactional-id-prefix": f"test.{out}"},
        "dlq": {"type": "kafka", "brokers": [b], "topic": dlq},
        "limits": {"max-record-bytes": "16KiB"},
        "parse": {"key-field": "order_id", "time-field": "ts", "op-field": "op", "id-field": "event_id"},
        "patterns": {"dedup": {"ttl": "1h"}, "enrich": "tests.test_kafka_harness:throttle_hook"},
    }


@dataclass
class OrdersCrashRun:
    result: CrashLoopResult
    want: Counter[str]  # table changes of the same pipeline run once in memory
    got: Counter[str]  # read_committed output after the crash loop

    @property
    def lost(self) -> Counter[str]:
        return self.want - self.got

    @property
    def extra(self) -> Counter[str]:
        return self.got - self.want


def orders_crash_loop(
    bootstrap: str,
    workdir: Path,
    *,
    records: int,
    kills: int,
    seed: int,
    kill_after_s: tuple[float, float] = (0.3, 1.6),
    throttle_ms: float = 3,
    log: Any = None,
) -> OrdersCrashRun:
    """The orders pipeline under `python -m bytewax.run ... -r DIR -s 1 -b 0` in a kill loop.

    Input: `records` generated orders (with duplicates and malformed lines) in a
    1-partition topic; output: a 2-partition topic, exactly-once.
    """
    from bytewax.testing import TestingSink, TestingSource, run_main

    from dataflows.generate import generate_orders
    from dataflows.pipelines.orders import build_flow
    from tests.fixtures.kafka import create_topic, read_topic

    tag = uuid.uuid4().hex[:8]
    src = create_topic(bootstrap, f"eo-orders-in-{tag}", 1)
    out = create_topic(bootstrap, f"eo-orders-out-{tag}", 2)
    dlq = create_topic(bootstrap, f"eo-orders-dlq-{tag}", 1)
    lines = generate_orders(records, seed=seed).lines
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for line in lines:
        producer.produce(src, line, partition=0)
    assert producer.flush(30) == 0
    cfg = orders_config(bootstrap, src, out, dlq)
    config_path = workdir / "orders.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    recovery, ready = workdir / "recovery", workdir / "ready"
    init_recovery(recovery)
    env = {**os.environ, "STREAMFORGE_CONFIG": str(config_path), "SF_TEST_READY_FILE": str(ready),
           "SF_TEST_THROTTLE_MS": str(throttle_ms)}
    cmd = [sys.executable, "-m", "bytewax.run", "dataflows.pipelines.orders:flow",
           "-r", str(recovery), "-s", "1", "-b", "0"]
    result = kill_loop(cmd, workdir, ready, kills=kills, seed=seed, kill_after_s=kill_after_s,
                       final_timeout_s=600, env=env, log=log)

    raw = [RawRecord(line, kafka_event_id(src, 0, i), f"kafka:{src}",
                     coords={"topic": src, "partition": 0, "offset": i}) for i, line in enumerate(lines)]
    expected: list[Any] = []
    run_main(build_flow(Config(cfg), source=TestingSource(raw), sink=TestingSink(expected),
                        dlq_sink=TestingSink([])))
    got = Counter(json.dumps(json.loads(m.value()), sort_keys=True)
                  for m in read_topic(bootstrap, out, partitions=2, timeout_s=120))
    want = Counter(json.dumps(to_jsonable(c), sort_keys=True) for c in expected)  # the sinks' one encoding
    return OrdersCrashRun(result, want, got)


def event_id_counts(messages: list[Any]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for m in messages:
        eid = dict(m.headers() or []).get("sf-event-id")
        counts[eid.decode() if eid else "<none>"] += 1
    return counts


if __name__ == "__main__":
    run_process(sys.argv[1], sys.argv[2])
