"""The envelopes every StreamForge stream carries.

`RawRecord` is what a source read (bytes, not yet parsed); `Event` is a parsed
record with a key and an event time. Both carry a deterministic `event_id`
derived from where the record came from, so that a replay produces the same
ids: exactly-once sinks and DLQ replay rely on it.

Id forms (DESIGN.md §2):

- `kafka:{topic}:{partition}:{offset}`
- `mongo:{ns}:{resume-token}`
- `file:{path}:{line}`
- `snapshot:{ns}:{generation}:{_id}`
- derived events: `{parent_id}/{step}` (see `derive_id`)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dataflows.json_codec import dumps
from dataflows.records import tuple_pickled

Headers = tuple[tuple[str, bytes], ...]

__all__ = [
    "Event",
    "Headers",
    "RawRecord",
    "derive_id",
    "file_event_id",
    "kafka_event_id",
    "mongo_event_id",
    "now_ms",
    "snapshot_event_id",
]


def now_ms() -> int:
    """Wall-clock time in milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def kafka_event_id(topic: str, partition: int, offset: int) -> str:
    return f"kafka:{topic}:{partition}:{offset}"


def mongo_event_id(ns: str, resume_token: str) -> str:
    return f"mongo:{ns}:{resume_token}"


def file_event_id(path: str, line: int) -> str:
    return f"file:{path}:{line}"


def snapshot_event_id(ns: str, generation: int, doc_id: str) -> str:
    return f"snapshot:{ns}:{generation}:{doc_id}"


def derive_id(parent_id: str, step: str) -> str:
    """Id of an event derived from `parent_id` by step `step`."""
    return f"{parent_id}/{step}"


@tuple_pickled  # every item crossing workers and every snapshot pickles it (dataflows.records)
@dataclass(frozen=True, slots=True)
class RawRecord:
    """Bytes read by a source, before parsing.

    `source` names the origin (`kafka:orders`, `file:data/orders.jsonl`);
    `coords` holds the source coordinates (topic, partition, offset, path,
    line...) that a dead letter must carry.
    """

    payload: bytes
    event_id: str
    source: str
    key: bytes | None = None
    timestamp_ms: int | None = None
    headers: Headers = ()
    coords: Mapping[str, Any] = field(default_factory=dict)


@tuple_pickled
@dataclass(frozen=True, slots=True)
class Event:
    """A parsed record.

    `key` routes the event to its state; `value` is the decoded document
    (usually a dict); `event_time_ms` is the event's own time in milliseconds
    since the Unix epoch (UTC); `op` is the change kind for CDC streams
    (`insert`, `update`, `replace`, `delete`, `snapshot`) or `None`.
    """

    key: str
    value: Any
    event_time_ms: int
    event_id: str
    source: str
    op: str | None = None
    headers: Headers = ()

    def derive(self, step: str, **changes: Any) -> Event:
        """A copy with a derived event id and the given fields replaced."""
        return replace(self, event_id=derive_id(self.event_id, step), **changes)

    def payload_bytes(self) -> bytes:
        """The value as JSON bytes (what a dead letter keeps of an Event): the sinks' strict
        encoding, `dataflows.json_codec.dumps`."""
        return dumps(self.value)
