"""MongoDB in and out: the change-stream source (with its re-sync) and the upsert sink.

Build them from a pipeline's config section (what `dataflows/pipelines/io.py` does):

    from dataflows.config import load_config
    from dataflows.connectors.mongo import mongo_sink_from_config, mongo_source_from_config

    cfg = load_config("config/customers_cdc.yaml")
    source = mongo_source_from_config(cfg.section("source"), "customers_cdc")
    sink = mongo_sink_from_config(cfg.section("sink"), "customers_cdc")

Modules: `from_config` (the entry points and their keys), `source` (`MongoChangeSource`,
one partition per collection; its `NamespaceState` is pickled into recovery state),
`sink` (`MongoSink` / `MongoWriter`), `codec` (keys and documents), `errors`
(which server errors are transient).
"""

from dataflows.connectors.mongo.from_config import (
    mongo_sink_from_config,
    mongo_sink_settings,
    mongo_source_from_config,
    mongo_source_settings,
)
from dataflows.connectors.mongo.sink import MongoSink, MongoWriter
from dataflows.connectors.mongo.source import GENERATION_KEY, MongoChangeSource, MongoSourceError

__all__ = [
    "GENERATION_KEY",
    "MongoChangeSource",
    "MongoSink",
    "MongoSourceError",
    "MongoWriter",
    "mongo_sink_from_config",
    "mongo_sink_settings",
    "mongo_source_from_config",
    "mongo_source_settings",
]
