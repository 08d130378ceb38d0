"""Kafka for StreamForge pipelines: sources, sinks and DLQ built from config.

`dataflows/pipelines/io.py` calls these with the `source` / `sink` / `dlq`
section of a pipeline config:

```yaml
source:
  type: kafka
  brokers: [127.0.0.1:9092]        # or "h1:9092,h2:9092"
  topics: [orders]                 # or topic: orders
  starting-offset: earliest        # earliest | latest (without a resume state)
  tail: true                       # false: stop at the end of the topics
  batch-size: 1000
sink:
  type: kafka
  brokers: [127.0.0.1:9092]
  topic: orders-table
  mode: exactly-once               # exactly-once | at-least-once (default)
  transactional-id-prefix: streamforge.orders    # default streamforge.<pipeline>
  transaction-timeout: 60s
  delivery-timeout: 30s
  retry: {max-attempts: 5, initial-backoff: 100ms, max-backoff: 10s, multiplier: 2, jitter: 0.2}
  commit-timeout: 30s              # exactly-once: per commit attempt
  scan-timeout: 20s                # exactly-once: bound of the tail scan at start (commit-timeout +
                                   #   scan-timeout must be below transaction-timeout)
  fresh-scan-window: 15m           # exactly-once, no resume state: scan only this writer's records
                                   #   of this last window (not the whole pre-existing topic)
  skip-window: 1000000             # exactly-once: offsets after a resume scan's end before an id
                                   #   the replay never met leaves the skip set
  verify-commits: true             # exactly-once: read each commit's last record back read_committed
                                   #   (restart if the broker acknowledged a commit it does not show)
  restore-window: 7d               # exactly-once: how far back a restore may go (savepoints.max-age);
                                   #   a topic retention.ms below it is warned about at start
  # partitions: 4                  # default: the topic's partition count (needed with check: false)
dlq:                               # the pipeline's one DLQ: the stream's dead letters and
  type: kafka                      #   the sink's own (SINK_WRITE, UNSUPPORTED_TYPE; see
  brokers: [127.0.0.1:9092]        #   dataflows.connectors.dlq.sink_dead_letters)
  topic: orders-dlq
```

Every builder checks the brokers and topics at start (metadata within
`metadata-timeout`, default 5s; `check: false` skips it): a bad address or a
missing topic is a `KafkaStartError` (a `ConfigError`) naming them. An
exactly-once sink also reads the output topic's configs (DescribeConfigs):
`cleanup.policy=compact` is refused (compaction drops records the tail scan
needs), a `retention.ms` below `restore-window` is warned about, and so is a
broker that does not report `retention.ms` (Tansu 0.6.0, DESIGN.md §10). The
partition count is also kept in the writer's state: a restart with another
count is refused (`transactional.OutputPartitionsChanged`, with how to
migrate).

Wiring: the source stream mixes `RawRecord` and `DeadLetter` (consumer
errors), split it with `dataflows.errors.split_dead_letters`. Write to a Kafka
sink with `dataflows.pipelines.io.write_output(step_id, stream, sink)`: the
Kafka sinks are `FixedPartitionedSink`s (one partition per Kafka partition)
and need `(key, item)` pairs, which `write_output` makes (key = `item.key`).
"""

from __future__ import annotations

import logging
from typing import Any

from bytewax.outputs import Sink
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

from dataflows.config import Config, ConfigError
from dataflows.connectors.dlq import sink_dead_letters
from dataflows.connectors.kafka.common import KafkaStartError, check_cluster, topic_config
from dataflows.connectors.kafka.dlq import KafkaDlqSink
from dataflows.connectors.kafka.sink import KafkaSinkSettings, ReliableKafkaSink
from dataflows.connectors.kafka.source import RawRecordKafkaSource
from dataflows.connectors.kafka.transactional import TransactionalSettings, TransactionalWriter
from dataflows.retry import retry_policy_from_config

__all__ = [
    "KafkaStartError",
    "brokers_from_config",
    "kafka_dlq_sink_from_config",
    "kafka_sink_from_config",
    "kafka_source_from_config",
]

MODES = ("exactly-once", "at-least-once")

log = logging.getLogger(__name__)


def brokers_from_config(cfg: Config, key: str = "brokers") -> list[str]:
    raw = cfg.raw(key)
    brokers = [b.strip() for b in raw.split(",")] if isinstance(raw, str) else [str(b) for b in raw]
    brokers = [b for b in brokers if b]
    if not brokers:
        raise ConfigError(f"{key}: at least one broker is required (in {cfg.origin})")
    return brokers


def _topics(cfg: Config) -> list[str]:
    raw = cfg.raw("topics", None)
    if raw is None:
        return [cfg.str("topic")]
    topics = [raw] if isinstance(raw, str) else [str(t) for t in raw]
    if not topics:
        raise ConfigError(f"topics: at least one topic is required (in {cfg.origin})")
    return topics


def kafka_source_from_config(cfg: Config, pipeline: str) -> RawRecordKafkaSource:
    """The `source` section -> a source of RawRecord (and SOURCE_ERROR DeadLetter)."""
    brokers, topics = brokers_from_config(cfg), _topics(cfg)
    start = cfg.choice("starting-offset", ("earliest", "latest"), "earliest")
    if cfg.bool("check", True):
        check_cluster(brokers, topics, cfg.duration("metadata-timeout", 5.0))
    return RawRecordKafkaSource(
        brokers,
        topics,
        pipeline=pipeline,
        tail=cfg.bool("tail", True),
        starting_offset=OFFSET_BEGINNING if start == "earliest" else OFFSET_END,
        batch_size=cfg.int("batch-size", 1000, minimum=1),
    )


def kafka_sink_from_config(cfg: Config, pipeline: str) -> Sink[Any]:
    """The `sink` section -> `TransactionalWriter` (exactly-once) or `ReliableKafkaSink`."""
    brokers, topic = brokers_from_config(cfg), cfg.str("topic")
    mode = cfg.choice("mode", MODES, "at-least-once")
    counts = check_cluster(brokers, [topic], cfg.duration("metadata-timeout", 5.0)) if cfg.bool("check", True) else {}
    settings = KafkaSinkSettings(
        brokers=tuple(brokers),
        topic=topic,
        pipeline=pipeline,
        retry=retry_policy_from_config(cfg),
        delivery_timeout_s=cfg.duration("delivery-timeout", 30.0),
        stage=cfg.str("stage", f"{pipeline}.sink"),  # the sink step id of the shipped pipelines
    )
    partitions = cfg.int("partitions", counts.get(topic, 0) or None, minimum=1)
    if partitions is not None and counts.get(topic, partitions) < partitions:
        raise ConfigError(f"{cfg.full_key('partitions')}: {partitions}, but topic {topic!r} has only "
                          f"{counts[topic]} partitions (in {cfg.origin})")
    if mode == "at-least-once":
        return ReliableKafkaSink(settings, sink_dead_letters(cfg, pipeline), partitions)
    if partitions is None:
        raise ConfigError(f"{cfg.full_key('partitions')}: needed when check is false in exactly-once mode "
                          f"(in {cfg.origin})")
    tx = _transactional_settings(cfg, settings, partitions, pipeline)
    if cfg.bool("check", True):
        _check_exactly_once_topic(cfg, brokers, topic)
    return TransactionalWriter(tx, sink_dead_letters(cfg, pipeline))


def _transactional_settings(
    cfg: Config, sink: KafkaSinkSettings, partitions: int, pipeline: str
) -> TransactionalSettings:
    """The exactly-once keys; `scan-timeout` + `commit-timeout` must fit in `transaction-timeout`
    (a partition built lazily blocks the worker's open transactions that long)."""
    tx = TransactionalSettings(
        sink=sink,
        partitions=partitions,
        transactional_id_prefix=cfg.str("transactional-id-prefix", f"streamforge.{pipeline}"),
        transaction_timeout_s=cfg.duration("transaction-timeout", 60.0),
        commit_timeout_s=cfg.duration("commit-timeout", 30.0),
        scan_timeout_s=cfg.duration("scan-timeout", 20.0),
        fresh_scan_window_s=cfg.duration("fresh-scan-window", 900.0),
        skip_window=cfg.int("skip-window", 1_000_000, minimum=1),
        verify_commits=cfg.bool("verify-commits", True),
    )
    if tx.scan_timeout_s + tx.commit_timeout_s >= tx.transaction_timeout_s:
        raise ConfigError(
            f"{cfg.full_key('scan-timeout')} ({tx.scan_timeout_s:g}s) + {cfg.full_key('commit-timeout')} "
            f"({tx.commit_timeout_s:g}s) must be below {cfg.full_key('transaction-timeout')} "
            f"({tx.transaction_timeout_s:g}s): a partition built while other transactions are open would "
            f"outlast them (in {cfg.origin})"
        )
    return tx


def _check_exactly_once_topic(cfg: Config, brokers: list[str], topic: str) -> None:
    """Refuse a compacted output topic; warn on a retention below `restore-window` or unknown."""
    try:
        configs = topic_config(brokers, topic, cfg.duration("metadata-timeout", 5.0))
    except KafkaStartError as exc:  # e.g. no DescribeConfigs permission: cannot check, say so
        log.warning("%s: cannot check the exactly-once output topic's cleanup.policy and retention.ms: %s",
                    cfg.full_key("topic"), exc)
        return
    if "compact" in configs.get("cleanup.policy", ""):
        raise KafkaStartError(
            f"{cfg.full_key('topic')}: topic {topic!r} has cleanup.policy={configs['cleanup.policy']}: "
            f"compaction deletes records the exactly-once tail scan needs after a restart (duplicates); use "
            f"cleanup.policy=delete for an exactly-once output (in {cfg.origin})"
        )
    window_s = cfg.duration("restore-window", 7 * 86400.0)
    raw = configs.get("retention.ms")
    if raw is None:
        log.warning("%s: topic %r: retention.ms not reported by the broker (DescribeConfigs; Tansu 0.6.0 "
                    "omits it, DESIGN.md §10): cannot check it against %s (%gs); make sure the topic keeps "
                    "records at least that long", cfg.full_key("topic"), topic, cfg.full_key("restore-window"),
                    window_s)
    elif 0 <= int(raw) < window_s * 1000:
        log.warning("WARNING %s: topic %r keeps records retention.ms=%s, less than %s (%gs): a restore "
                    "that far back replays into a partition whose tail was deleted, and the exactly-once "
                    "scan cannot see what it must skip (duplicates)", cfg.full_key("topic"), topic, raw,
                    cfg.full_key("restore-window"), window_s)


def kafka_dlq_sink_from_config(cfg: Config, pipeline: str) -> KafkaDlqSink:
    """The `dlq` section -> a sink of DeadLetter (value JSON, Connect headers, original key)."""
    brokers, topic = brokers_from_config(cfg), cfg.str("topic")
    if cfg.bool("check", True):
        check_cluster(brokers, [topic], cfg.duration("metadata-timeout", 5.0))
    return KafkaDlqSink(brokers, topic, retry=retry_policy_from_config(cfg))
