"""Kafka in and out: the source, the two sinks (at-least-once, exactly-once) and the DLQ.

Build them from a pipeline's config section (what `dataflows/pipelines/io.py` does):

    from dataflows.config import load_config
    from dataflows.connectors.kafka import kafka_sink_from_config, kafka_source_from_config

    cfg = load_config("config/orders.yaml")
    source = kafka_source_from_config(cfg.section("source"), "orders")
    sink = kafka_sink_from_config(cfg.section("sink"), "orders")   # mode: exactly-once -> TransactionalWriter

Modules: `from_config` (the entry points and their keys), `source` (`RawRecordKafkaSource`),
`sink` (`ReliableKafkaSink`, at-least-once), `transactional` and `transactional_scan`
(`TransactionalWriter`, exactly-once, DESIGN.md §4), `dlq` (the Kafka DLQ writer), `common`
(headers, keys, partitioning, cluster checks).
"""

from dataflows.connectors.kafka.common import KafkaStartError
from dataflows.connectors.kafka.dlq import KafkaDlqSink
from dataflows.connectors.kafka.from_config import (
    brokers_from_config,
    kafka_dlq_sink_from_config,
    kafka_sink_from_config,
    kafka_source_from_config,
)
from dataflows.connectors.kafka.sink import KafkaSinkSettings, ReliableKafkaSink
from dataflows.connectors.kafka.source import RawRecordKafkaSource
from dataflows.connectors.kafka.transactional import TransactionalSettings, TransactionalWriter
from dataflows.connectors.kafka.transactional_scan import exactly_once_writer

__all__ = [
    "KafkaDlqSink",
    "KafkaSinkSettings",
    "KafkaStartError",
    "RawRecordKafkaSource",
    "ReliableKafkaSink",
    "TransactionalSettings",
    "TransactionalWriter",
    "brokers_from_config",
    "exactly_once_writer",
    "kafka_dlq_sink_from_config",
    "kafka_sink_from_config",
    "kafka_source_from_config",
]
