"""The one metrics registry of StreamForge (Prometheus, `prometheus-client`).

Every metric lives here, so code, alert rules and the dashboard share one name
per idea. They register in prometheus-client's default REGISTRY, which
Bytewax appends to its own `/metrics` when a flow runs with
`BYTEWAX_DATAFLOW_API_ENABLED=true`; the supervisor serves the same registry.

The seed's five monitoring metrics and their exported names:

| seed                       | exported                                   |
|----------------------------|--------------------------------------------|
| `checkpoint_duration_ms`   | `streamforge_checkpoint_duration_ms` (histogram) |
| `checkpoint_failure_count` | `streamforge_checkpoint_failure_count_total` |
| `source_latency_ms`        | `streamforge_source_latency_ms` (histogram) |
| `dlq_event_count`          | `streamforge_dlq_event_count_total`        |
| `restarts`                 | `streamforge_restarts_total`               |

A label naming a dataflow step is `step`, with the full Bytewax step id
(`<flow id>.<step>`, e.g. `orders.parse`, `orders.sink`), on every metric.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

__all__ = [
    "CHECKPOINT_DURATION",
    "CHECKPOINT_FAILURES",
    "CHECKPOINT_SIZE",
    "CHECKPOINTS_COMPLETED",
    "DLQ_EVENTS",
    "EPOCH_CLOSE",
    "LAST_CHECKPOINT_TIMESTAMP",
    "LAST_SNAPSHOT_WRITE",
    "LATE_EVENTS",
    "MONGO_NAMESPACE_GONE",
    "MONGO_RESYNC_EXCEEDS_OPLOG_WINDOW",
    "REGISTRY",
    "RESTARTS",
    "RESUME_TOKEN_AGE",
    "SAVEPOINTS",
    "SINK_RETRIES",
    "SOURCE_LATENCY",
    "STATE_EVICTIONS",
]

_MS_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000)

CHECKPOINT_DURATION = Histogram(
    "streamforge_checkpoint_duration_ms",
    "Time to take and upload one checkpoint or savepoint, in milliseconds.",
    ["pipeline", "kind"],
    buckets=_MS_BUCKETS,
)
CHECKPOINT_FAILURES = Counter(
    "streamforge_checkpoint_failure_count",
    "Checkpoints or savepoints that failed (storage error, timeout).",
    ["pipeline", "kind"],
)
CHECKPOINTS_COMPLETED = Counter(
    "streamforge_checkpoints_completed",
    "Checkpoints or savepoints that completed.",
    ["pipeline", "kind"],
)
CHECKPOINT_SIZE = Gauge(
    "streamforge_checkpoint_size_bytes",
    "Bytes uploaded by the last completed checkpoint.",
    ["pipeline", "kind"],
)
LAST_CHECKPOINT_TIMESTAMP = Gauge(
    "streamforge_last_checkpoint_timestamp_seconds",
    "Unix time of the last completed checkpoint; age = time() - this.",
    ["pipeline"],
)
SOURCE_LATENCY = Histogram(
    "streamforge_source_latency_ms",
    "Now minus the source timestamp of each record read (Kafka: of each batch's oldest record, once per batch), in ms.",
    ["pipeline", "source"],
    buckets=_MS_BUCKETS,
)
DLQ_EVENTS = Counter(
    "streamforge_dlq_event_count",
    "Records sent to the dead-letter queue, by the step that failed them (the dead letter's stage).",
    ["pipeline", "step", "error_code"],
)
RESTARTS = Counter(
    "streamforge_restarts",
    "Automatic restarts of the dataflow by the supervisor.",
    ["pipeline"],
)
RESUME_TOKEN_AGE = Gauge(
    "streamforge_resume_token_age_seconds",
    "Age of the newest MongoDB resume token held per watched namespace.",
    ["pipeline", "namespace"],
)
MONGO_NAMESPACE_GONE = Gauge(
    "streamforge_mongo_namespace_gone",
    "1 while a watched MongoDB namespace is renamed away, dropped or absent and the source waits or is stopped.",
    ["pipeline", "namespace"],
)
MONGO_RESYNC_EXCEEDS_OPLOG_WINDOW = Gauge(
    "streamforge_mongo_resync_exceeds_oplog_window",
    "1 when a MongoDB re-sync lost its start position twice in a row (longer than the oplog window); "
    "the source stopped.",
    ["pipeline", "namespace"],
)
LATE_EVENTS = Counter(
    "streamforge_late_events",
    "Events later than the allowed lateness, sent to the late side output.",
    ["pipeline", "step"],
)
STATE_EVICTIONS = Counter(
    "streamforge_state_evictions",
    "Keys discarded from state (TTL expiry, closed sessions, deletes).",
    ["pipeline", "step", "reason"],
)
SAVEPOINTS = Gauge(
    "streamforge_savepoints",
    "Savepoints in the store, by state (completed, failed, in_progress).",
    ["pipeline", "state"],
)
SINK_RETRIES = Counter(
    "streamforge_sink_retries",
    "Retried sink writes (transient failures), by the sink's step.",
    ["pipeline", "step"],
)
# Epoch alignment (the seed's "checkpoint duration and alignment time"): measured by the
# supervisor (streamforge_ops/epochs.py) from the recovery partitions' frontier and from
# Bytewax's own `partd_write_duration_seconds` on the dataflow API.
EPOCH_CLOSE = Histogram(
    "streamforge_epoch_close_seconds",
    "Time each Bytewax epoch (the global snapshot barrier) took to close, as seen by the supervisor.",
    ["pipeline"],
    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300),
)
LAST_SNAPSHOT_WRITE = Gauge(
    "streamforge_last_snapshot_write_seconds",
    "Mean duration of Bytewax's recovery-partition snapshot writes (partd_write_duration_seconds) "
    "since the previous scrape.",
    ["pipeline"],
)
