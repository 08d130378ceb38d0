"""Everything that runs inside a Bytewax dataflow: events, patterns, connectors, pipelines."""
