"""MongoDB connectors from configuration: the entry points `pipelines/io.py` calls.

    source:                       # mongo_source_from_config(cfg.section("source"), pipeline)
      type: mongo
      uri: mongodb://host:27017/?replicaSet=rs0
      database: shop
      collections: [customers]    # one partition per collection
      snapshot-mode: when_needed  # when_needed | initial | never
      snapshot-chunk-size: 1024
      snapshot-max-docs-per-second: 0   # 0 = unthrottled
      batch-size: 1000
      max-await: 50ms             # getMore maxAwaitTimeMS: next_batch never blocks longer
      max-document-bytes: 1MiB    # larger documents -> dead letter OVERSIZED (0 = no limit)
      require-collection: true    # a missing collection fails at start
      namespace-gone: stop        # stop | follow: on rename / drop / dropDatabase of the collection
      split-large-events: false   # $changeStreamSplitLargeEvent (MongoDB 6.0.9+)
      drop-update-description: true   # only fullDocument is used: smaller events
      oversize-handling: fail     # fail | skip (events over 16 MiB -> DLQ OVERSIZED)
      server-selection-timeout: 2s
      reconnect: {initial-backoff: 100ms, max-backoff: 5s}   # (was reconnect-initial-backoff /
                                  #   reconnect-max-backoff: still read, with a deprecation warning)
    sink:                         # mongo_sink_from_config(cfg.section("sink"), pipeline)
      type: mongo
      uri: ...
      database: shop
      collection: customers_view
      version-field: version      # optional guard: never overwrite a newer version
      retry: {max-attempts: 5, initial-backoff: 50ms, max-backoff: 2s, multiplier: 2, jitter: 0.2}
      # MongoSink's own dead letters go to the pipeline's `dlq` (file or Kafka)

A bad connection string fails here, at build time, with the key named; an
unreachable server or a missing collection fails when the source starts.
"""

from __future__ import annotations

from pymongo.errors import ConfigurationError, InvalidURI
from pymongo.uri_parser import parse_uri

from dataflows.config import Config, ConfigError
from dataflows.connectors.dlq import sink_dead_letters
from dataflows.connectors.mongo.sink import (
    DEFAULT_SINK_RETRY,
    MongoSink,
    MongoSinkSettings,
)
from dataflows.connectors.mongo.source import (
    NAMESPACE_GONE_MODES,
    OVERSIZE_MODES,
    SNAPSHOT_MODES,
    MongoChangeSource,
    MongoSourceSettings,
)
from dataflows.retry import retry_policy_from_config

__all__ = [
    "mongo_sink_from_config",
    "mongo_sink_settings",
    "mongo_source_from_config",
    "mongo_source_settings",
]


def _uri(cfg: Config) -> str:
    uri = cfg.str("uri")
    try:
        parse_uri(uri)
    except (InvalidURI, ConfigurationError, ValueError) as exc:
        # never echo the URI itself: it may hold a password
        raise ConfigError(f"uri: not a valid MongoDB connection string: {exc} (in {cfg.origin})") from None
    return uri


def _collections(cfg: Config) -> tuple[str, ...]:
    raw = cfg.raw("collections")
    names = [c.strip() for c in raw.split(",")] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names or not all(isinstance(c, str) and c for c in names):
        raise ConfigError(f"collections: expected a non-empty list of collection names (in {cfg.origin})")
    return tuple(names)


RENAMED_SOURCE_KEYS = {
    "reconnect-initial-backoff": "reconnect.initial-backoff",
    "reconnect-max-backoff": "reconnect.max-backoff",
}


def mongo_source_settings(cfg: Config, pipeline: str) -> MongoSourceSettings:
    """Source settings from the `source` section."""
    cfg = cfg.renamed(RENAMED_SOURCE_KEYS)
    return MongoSourceSettings(
        uri=_uri(cfg),
        database=cfg.str("database"),
        collections=_collections(cfg),
        pipeline=pipeline,
        snapshot_mode=cfg.choice("snapshot-mode", SNAPSHOT_MODES, "when_needed"),
        chunk_size=cfg.int("snapshot-chunk-size", 1024, minimum=1),
        max_docs_per_second=cfg.float("snapshot-max-docs-per-second", 0.0),
        batch_size=cfg.int("batch-size", 1000, minimum=1),
        max_await_ms=int(cfg.duration("max-await", 0.05) * 1000),
        max_document_bytes=cfg.size("max-document-bytes", 0),
        require_collection=cfg.bool("require-collection", True),
        server_selection_timeout_ms=int(cfg.duration("server-selection-timeout", 2.0) * 1000),
        initial_backoff_s=cfg.duration("reconnect.initial-backoff", 0.1),
        max_backoff_s=cfg.duration("reconnect.max-backoff", 5.0),
        namespace_gone=cfg.choice("namespace-gone", NAMESPACE_GONE_MODES, "stop"),
        split_large_events=cfg.bool("split-large-events", False),
        drop_update_description=cfg.bool("drop-update-description", True),
        oversize_handling=cfg.choice("oversize-handling", OVERSIZE_MODES, "fail"),
    )


def mongo_source_from_config(cfg: Config, pipeline: str) -> MongoChangeSource:
    """A change-stream source (with SnapshotLoader) for the `source` section."""
    return MongoChangeSource(mongo_source_settings(cfg, pipeline))


def mongo_sink_settings(cfg: Config, pipeline: str) -> MongoSinkSettings:
    """Sink settings from the `sink` section."""
    return MongoSinkSettings(
        uri=_uri(cfg),
        database=cfg.str("database"),
        collection=cfg.str("collection"),
        pipeline=pipeline,
        version_field=cfg.str("version-field", None),
        retry=retry_policy_from_config(cfg, DEFAULT_SINK_RETRY),
        server_selection_timeout_ms=int(cfg.duration("server-selection-timeout", 5.0) * 1000),
        stage=f"{pipeline}.sink",  # the sink step id of the shipped pipelines (MongoSink uses its own)
    )


def mongo_sink_from_config(cfg: Config, pipeline: str) -> MongoSink:
    """A MongoDB sink for the `sink` section; its dead letters go to the pipeline's `dlq`."""
    return MongoSink(mongo_sink_settings(cfg, pipeline), sink_dead_letters(cfg, pipeline))
