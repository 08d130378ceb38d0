"""The three chaos workloads: their inputs (made once per invocation) and run configs.

All three run the orders pipeline (config/orders.yaml) on generated orders
(`dataflows.generate.generate_orders`: with redeliveries and malformed lines,
so the Deduplicator and the DLQ have work), slowed by the `throttle` hook:

- `kafka-exactly-once`: Kafka (2 partitions, keyed by order) -> Kafka
  exactly-once (TransactionalWriter), 2 workers, 4 output partitions;
- `kafka-at-least-once`: the same with `sink.mode: at-least-once`: the
  output may hold copies, never a loss or a different record;
- `file`: the embedded default, JSONL file -> JSONL table and DLQ, 1 worker,
  `file://` checkpoint store;
- `cluster-exactly-once` (opt-in, `--workloads`): `kafka-exactly-once`'s
  input and sinks on `streamforge run --processes 2` (one Bytewax cluster of
  2 processes, 1 worker each, one supervisor): its output must be identical
  to the one-process fault-free run of `kafka-exactly-once`.

`--pipeline-config` / `--input` (scripts/chaos.py) replace the orders config
and the generated input: the harness then keeps the pipeline's flow, parse
and pattern settings and replaces only its source, sinks, recovery and
checkpoint settings.

The input is shared by every run of a workload (same topic name, partitions
and offsets on either broker, or the same file: the same event ids); each run gets its own output topics, recovery directory,
store prefix and transactional ids.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from scripts.chaoslib.checker import Record
from scripts.chaoslib.schedule import CLUSTER
from scripts.chaoslib.services import BUCKET, Services
from tests.fixtures.kafka import KafkaBroker, create_topic, read_topic

__all__ = ["Workload", "WorkloadInput", "input_of", "make_input"]

REPO = Path(__file__).resolve().parents[2]
IN_PARTITIONS = 2
OUT_PARTITIONS = 4
PROCESSES = {CLUSTER: 2}  # workload -> `streamforge run --processes N` (others: one process)


def input_of(workload: str) -> str:
    """The workload whose input (and fault-free output) `workload` shares: the cluster
    workload runs kafka-exactly-once's, so its output must be the one-process output."""
    return "kafka-exactly-once" if workload == CLUSTER else workload


@dataclass(frozen=True)
class WorkloadInput:
    workload: str
    source: str  # topic or file path
    records: int


def _order_partition(line: bytes) -> int:
    try:
        key = str(json.loads(line)["order_id"])
    except (ValueError, KeyError, TypeError):
        return 0
    return zlib.crc32(key.encode()) % IN_PARTITIONS


def make_input(workload: str, broker: KafkaBroker | None, work: Path, records: int, seed: int,
               lines_from: Path | None = None) -> WorkloadInput:
    """The workload's input, once: generated orders (or the first `records` lines of
    `lines_from`) in a topic keyed by `order_id`, or in a JSONL file."""
    from dataflows.generate import generate_orders

    if lines_from is not None:
        lines = lines_from.read_bytes().splitlines()[:records]
    else:
        lines = generate_orders(records, seed=seed, oversized_bytes=20_000).lines
    if workload == "file":
        path = work / "input" / "orders.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        return WorkloadInput(workload, str(path), len(lines))
    assert broker is not None
    topic = create_topic(broker.bootstrap, f"chaos-in-{workload}-{seed}", IN_PARTITIONS)
    # Idempotent: a produce retried after a slow broker (the S3-backed Tansu of broker-restart
    # runs) must not duplicate or reorder input records, or their offset-derived event ids
    # would differ from the fault-free run's and the checker would report phantom differences.
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5,
                         "message.max.bytes": 2_000_000, "enable.idempotence": True})
    for line in lines:
        producer.produce(topic, line, partition=_order_partition(line))
    if producer.flush(60) != 0:
        raise RuntimeError(f"could not produce the input of {workload} to {topic}")
    _check_input_count(broker.bootstrap, topic, len(lines))
    return WorkloadInput(workload, topic, len(lines))


def _check_input_count(bootstrap: str, topic: str, expected: int) -> None:
    """The input topic holds exactly the produced records, no retried duplicate: read back
    (Tansu's high watermarks are not record counts, DESIGN.md §10), bounded by a deadline."""
    import time

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-check-{topic}",
                         "enable.auto.commit": False})
    seen = 0
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(IN_PARTITIONS)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msgs = consumer.consume(1000, timeout=0.5)
            seen += sum(1 for m in msgs if m.error() is None)
            if seen >= expected and not msgs:
                break
    finally:
        consumer.close()
    if seen != expected:
        raise RuntimeError(f"input topic {topic} holds {seen} records, {expected} were produced")


# The memory broker commits in milliseconds: short client timeouts let a broker pause (6-9 s)
# outlast them. The durable broker (Tansu on S3) keeps every transaction in one meta.json
# that each request rewrites by If-Match: with four writers a commit took 1 to 10.5 s (load 8,
# four transactional producers, 90 records per commit), so its runs keep StreamForge's default
# sink timeouts (dataflows/connectors/kafka/from_config.py) and `DURABLE_PAUSE_EXTRA_S` /
# `DURABLE_DEADLINE_EXTRA_S` (runner.py) keep a pause longer than them and the run's deadline fair.
SINK_TIMEOUTS = {"delivery-timeout": "5s", "commit-timeout": "3s", "scan-timeout": "5s", "transaction-timeout": "10s"}
DURABLE_SINK_TIMEOUTS = {"delivery-timeout": "30s", "commit-timeout": "30s", "scan-timeout": "20s",
                         "transaction-timeout": "60s"}


@dataclass
class Workload:
    """One run's resources and config for a workload."""

    inp: WorkloadInput
    services: Services
    broker: KafkaBroker | None  # None for the file workload
    root: Path
    tag: str
    base_config: Path = REPO / "config" / "orders.yaml"
    workload: str = ""  # the run's workload when it is not its input's (`input_of`)
    _watcher: Consumer | None = None
    out_topic: str = ""  # Kafka: set by write_config

    @property
    def name(self) -> str:
        return self.workload or self.inp.workload

    @property
    def processes(self) -> int:
        return PROCESSES.get(self.name, 1)

    @property
    def run_flags(self) -> list[str]:
        """Extra `streamforge run` flags of the workload (`--processes N` for a cluster)."""
        return ["--processes", str(self.processes)] if self.processes > 1 else []

    @property
    def durable(self) -> bool:
        """On the durable broker (Tansu on S3: the runs that restart the broker)."""
        return self.broker is not None and bool(self.broker.storage_engine)

    @property
    def kafka(self) -> bool:
        return self.name != "file"

    @property
    def exactly_once(self) -> bool:
        return self.name != "kafka-at-least-once"

    @property
    def recovery_dir(self) -> Path:
        return self.root / "recovery"

    def write_config(self) -> Path:
        """Create the run's topics and write its config; the path."""
        cfg: dict[str, Any] = yaml.safe_load(self.base_config.read_text())
        out = self.root / "out"
        cfg["pipeline"].update({"workers": 2 if self.kafka and self.processes == 1 else 1})  # per process
        for section in ("patterns", "recovery", "checkpoints", "savepoints"):
            cfg.setdefault(section, {})
        cfg["patterns"].setdefault("enrich", "scripts.chaoslib.hooks:throttle")  # keep a pipeline's own hook
        cfg["recovery"].update({"dir": str(self.recovery_dir), "partitions": 4, "snapshot-interval": "1s",
                                "backup-interval": "10s", "compact-interval": "2s",
                                "restart": {"initial-backoff": "0.2s", "max-backoff": "1s"}, "stop-grace": "10s"})
        cfg["checkpoints"].update({"interval": "1s", "timeout": "8s", "min-pause": "0s", "retained": 3})
        cfg["metrics"] = {"port": 0, "host": "127.0.0.1"}
        if self.kafka:
            assert self.broker is not None
            b = self.broker.bootstrap
            self.out_topic = create_topic(b, f"chaos-out-{self.tag}", OUT_PARTITIONS)
            self.dlq_topic = create_topic(b, f"chaos-dlq-{self.tag}", 1)
            cfg["source"] = {"type": "kafka", "brokers": [b], "topics": [self.inp.source], "tail": False,
                             "batch-size": 100, "starting-offset": "earliest"}
            cfg["sink"] = {"type": "kafka", "brokers": [b], "topic": self.out_topic,
                           "mode": "exactly-once" if self.exactly_once else "at-least-once",
                           "transactional-id-prefix": f"chaos-{self.tag}",
                           **(DURABLE_SINK_TIMEOUTS if self.durable else SINK_TIMEOUTS)}
            cfg["dlq"] = {"type": "kafka", "brokers": [b], "topic": self.dlq_topic}
            store = {"dir": f"s3://{BUCKET}/{self.tag}", "endpoint-url": self.services.proxy.endpoint_url}
        else:
            cfg["source"] = {"type": "file", "path": self.inp.source, "tail": False}
            cfg["sink"] = {"type": "file", "path": str(out / "table.jsonl")}
            cfg["dlq"] = {"type": "file", "path": str(out / "dlq.jsonl")}
            store = {"dir": f"file://{self.root / 'store'}"}
        cfg["checkpoints"].update(store)
        cfg["savepoints"].update(store)
        path = self.root / "config.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def progress(self) -> int:
        """How much output exists so far: the output partitions' high watermarks (every record
        written, committed or not), or the table file's size; 0 when it cannot be told now."""
        if not self.kafka:
            try:
                return (self.root / "out" / "table.jsonl").stat().st_size
            except OSError:
                return 0
        if self._watcher is None:
            assert self.broker is not None
            # read_uncommitted: the high watermark is the log end offset. librdkafka's default,
            # read_committed, asks for the last stable offset (KIP-98 ListOffsets), which an
            # exactly-once run's always-open transaction holds at its first record.
            self._watcher = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": "chaos-progress",
                                      "enable.auto.commit": False, "log_level": 0,
                                      "isolation.level": "read_uncommitted"})
        total = 0
        for p in range(OUT_PARTITIONS):
            try:
                total += self._watcher.get_watermark_offsets(TopicPartition(self.out_topic, p), timeout=0.5,
                                                             cached=False)[1]
            except KafkaException:
                return 0  # the broker is paused or down: no progress now
        return total

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None

    def log_positions(self) -> dict[str, list[str]]:
        """The output log's records, committed or not (Kafka workloads; empty for files)."""
        if not self.kafka:
            return {}
        assert self.broker is not None
        return log_positions(self.broker.bootstrap, self.out_topic)

    def read_output(self) -> tuple[list[Record], list[str]]:
        """The run's output records (read_committed for Kafka) and its dead letters (canonical)."""
        if self.kafka:
            assert self.broker is not None
            b = self.broker.bootstrap
            try:
                committed = read_topic(b, self.out_topic, partitions=OUT_PARTITIONS, timeout_s=60)
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}; {_open_tails(b, self.out_topic)}") from exc
            out = [Record(_header(m, "sf-event-id"), json.dumps(
                [m.partition(), _text(m.key()), json.loads(m.value() or b"null")], sort_keys=True))
                for m in committed]
            dlq = [_dead_letter(m.value() or b"{}") for m in read_topic(b, self.dlq_topic, partitions=1, timeout_s=60)]
            return out, dlq
        table, dlq_path = self.root / "out" / "table.jsonl", self.root / "out" / "dlq.jsonl"
        rows = [json.loads(line) for line in _lines(table)]
        out = [Record(str(_find(r, "event_id")), json.dumps(r, sort_keys=True)) for r in rows]
        return out, [_dead_letter(line) for line in _lines(dlq_path)]


def log_positions(bootstrap: str, topic: str) -> dict[str, list[str]]:
    """Every record of the output log, committed or not (read_uncommitted): event id -> where
    ("partition:offset writer"). Tells a record the broker never stored from one whose
    transaction never committed."""
    where: dict[str, list[str]] = {}
    for m in read_topic(bootstrap, topic, partitions=OUT_PARTITIONS, read_committed=False, timeout_s=30):
        where.setdefault(_header(m, "sf-event-id"), []).append(f"{m.partition()}:{m.offset()} {_header(m, 'sf-writer')}")
    return where


def _open_tails(bootstrap: str, topic: str) -> str:
    """Where read_committed stops on each output partition against the end of its log, and which
    writers wrote the records beyond that point: what a stuck read waits for. Measured by reading
    (Tansu 0.6.0's ListOffsets ignores the isolation level, so it cannot tell the last stable
    offset); one read_uncommitted pass for every partition."""
    stops = _committed_stops(bootstrap, topic)
    beyond: dict[int, dict[str, list[int]]] = {}
    ends: dict[int, int] = {}
    for m in read_topic(bootstrap, topic, partitions=OUT_PARTITIONS, read_committed=False, timeout_s=30):
        p, offset = int(m.partition() or 0), int(m.offset() or 0)
        ends[p] = max(ends.get(p, 0), offset + 1)
        if offset >= stops.get(p, 0):
            span = beyond.setdefault(p, {}).setdefault(_header(m, "sf-writer"), [offset, offset])
            span[1] = offset
    parts = [f"partition {p}: read_committed stops at {stops.get(p, 0)}, log end {ends[p]}, beyond it: {beyond[p]}"
             for p in sorted(beyond)]
    return "; ".join(parts) or "read_committed reaches the end of every partition's log now"


def _committed_stops(bootstrap: str, topic: str, idle_s: float = 3.0) -> dict[int, int]:
    """Per partition, the offset after the last record a read_committed consumer returns before
    it goes idle for `idle_s`."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "chaos-diagnose",
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    stops: dict[int, int] = {}
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(OUT_PARTITIONS)])
        idle_until = time.monotonic() + idle_s
        while time.monotonic() < idle_until:
            for m in c.consume(1000, 0.2):
                if m.error() is None:
                    stops[int(m.partition() or 0)] = int(m.offset() or 0) + 1
                    idle_until = time.monotonic() + idle_s
        return stops
    finally:
        c.close()


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()] if path.exists() else []


def _find(doc: Any, field: str) -> Any:
    """The first `field` anywhere in a JSON document (the table row's event id)."""
    if isinstance(doc, dict):
        if field in doc:
            return doc[field]
        doc = list(doc.values())
    if isinstance(doc, list):
        for item in doc:
            found = _find(item, field)
            if found is not None:
                return found
    return None


def _text(b: bytes | None) -> str | None:
    return b.decode("utf-8", "backslashreplace") if b is not None else None


def _header(m: Any, name: str) -> str:
    value = dict(m.headers() or []).get(name)
    return value.decode() if value else "<none>"


def _dead_letter(raw: bytes) -> str:
    """A dead letter's identity: error code, stage, event id, payload (not times or attempts)."""
    d = json.loads(raw)
    return json.dumps([d.get("error_code"), d.get("stage"), d.get("event_id"), d.get("payload")])
