"""JSON Lines files in and out, resumable by byte offset (see `jsonl.py`).

    from dataflows.connectors.files import JsonlSink, JsonlSource

    source = JsonlSource(["in/*.jsonl"], tail=False)   # one partition per file
    sink = JsonlSink(".streamforge/orders/out/table.jsonl")

`replay_lines.py` is the envelope `streamforge dlq replay` appends to a source
file so the replayed line keeps its original event id.
"""

from dataflows.connectors.files.jsonl import (
    FilePosition,
    FileShrankError,
    JsonlSink,
    JsonlSinkPartition,
    JsonlSource,
    expand_paths,
    json_line,
    read_jsonl,
    to_jsonable,
)
from dataflows.connectors.files.replay_lines import replay_line, unwrap_replay_line

__all__ = [
    "FilePosition",
    "FileShrankError",
    "JsonlSink",
    "JsonlSinkPartition",
    "JsonlSource",
    "expand_paths",
    "json_line",
    "read_jsonl",
    "replay_line",
    "to_jsonable",
    "unwrap_replay_line",
]
