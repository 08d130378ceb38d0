"""What the Kafka source, sinks and DLQ share: start checks, serialisation, errors.

Serialisation of sink items (`to_out_message`):

- key: `item.key` (str -> UTF-8, bytes kept, None -> no key);
- value: bytes kept as they are; a dataclass (Event, TableChange, ...) or a
  mapping -> the one strict JSON encoding of every sink (`dataflows.json_codec.dumps`:
  compact, keys sorted, a dataclass's `"type"`, non-UTF-8 bytes as base64);
- headers: `sf-event-id` = `item.event_id` (an item without one, e.g. a
  Session revision, gets `content:<blake2b of key and value>`: deterministic,
  so the exactly-once sink still recognises a replayed record), plus the
  item's own `headers` (an Event's) when they are `(str, bytes)` pairs.

Routing: `partition_for(key, n)` = `dataflows.shard.shard_of` (crc32(key) mod n), stable across processes
(same key -> same partition, so per-key order survives).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka.admin import AdminClient

from dataflows.config import ConfigError
from dataflows.json_codec import dumps
from dataflows.shard import shard_of

__all__ = [
    "EVENT_ID_HEADER",
    "REPLAY_HEADER",
    "WRITER_HEADER",
    "KafkaStartError",
    "OutMessage",
    "check_cluster",
    "header_value",
    "is_fenced",
    "is_per_record",
    "is_transient",
    "partition_for",
    "topic_config",
    "to_out_message",
]

EVENT_ID_HEADER = "sf-event-id"
REPLAY_HEADER = "sf-replay"
WRITER_HEADER = "sf-writer"  # the exactly-once writer's transactional id, on every record it writes

_TRANSIENT_CODES = {
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.CONCURRENT_TRANSACTIONS,
}


# Errors about one record (it can never be written), not about the producer or the transaction.
_PER_RECORD_CODES = {
    KafkaError.MSG_SIZE_TOO_LARGE,  # librdkafka's own check in produce() and the broker's refusal
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.INVALID_MSG,
    KafkaError.INVALID_RECORD,
    KafkaError._KEY_SERIALIZATION,
    KafkaError._VALUE_SERIALIZATION,
}

_FENCED_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


class KafkaStartError(ConfigError):
    """The brokers or topics of a Kafka section cannot be used (checked at start)."""


class OutMessage(NamedTuple):
    """One record ready to produce (a tuple: built once per output record, cheaply)."""

    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    event_id: str


def is_transient(err: KafkaError | BaseException | None) -> bool:
    """Whether retrying may help (broker away, leader moving, timeouts)."""
    if isinstance(err, KafkaException):
        err = err.args[0] if err.args else None
    if not isinstance(err, KafkaError):
        return isinstance(err, (BufferError, TimeoutError))
    if err.fatal():
        return False
    return err.retriable() or err.code() in _TRANSIENT_CODES


def _kafka_error(err: KafkaError | BaseException | None) -> KafkaError | None:
    if isinstance(err, KafkaException):
        err = err.args[0] if err.args else None
    return err if isinstance(err, KafkaError) else None


def is_per_record(err: KafkaError | BaseException | None) -> bool:
    """Whether the error is about the record itself (too large, invalid): it can never be written.

    `_STATE` (the transaction is abortable), timeouts and fencing are not: they are about the
    producer or the transaction, and the record is written once that is resolved.
    """
    kerr = _kafka_error(err)
    return kerr is not None and not kerr.fatal() and kerr.code() in _PER_RECORD_CODES


def is_fenced(err: KafkaError | BaseException | None) -> bool:
    """Whether the producer is fenced or failed fatally (`_FATAL`): it can never write again."""
    kerr = _kafka_error(err)
    return kerr is not None and (kerr.fatal() or kerr.code() in _FENCED_CODES)


def partition_for(key: bytes | None, partitions: int) -> int:
    """The output partition of `key`: `dataflows.shard.shard_of`, the one routing hash."""
    return shard_of(key, partitions)


def _as_key(key: Any) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return str(key).encode()


@dataclass(frozen=True, slots=True)
class _Shape:
    """What `to_out_message` reads from a dataclass type (found once per type)."""

    event_id: bool
    key: bool
    headers: bool


_SHAPES: dict[type, _Shape] = {}


def _shape(cls: type) -> _Shape:
    shape = _SHAPES.get(cls)
    if shape is None:
        names = {f.name for f in fields(cls)}
        shape = _SHAPES[cls] = _Shape(*(n in names or hasattr(cls, n) for n in ("event_id", "key", "headers")))
    return shape


def _new_message(fields: tuple[bytes | None, bytes, tuple[tuple[str, bytes], ...], str]) -> OutMessage:
    """`OutMessage(*fields)` without the NamedTuple's Python-level `__new__`."""
    return tuple.__new__(OutMessage, fields)


def to_out_message(item: Any) -> OutMessage:
    """Serialise a sink item (see module docstring); TypeError if impossible. The message's
    headers are the item's own (never `sf-event-id` / `sf-writer`: the sinks set those)
    followed by `sf-event-id`."""
    extra: Any = ()
    shape = _SHAPES.get(type(item))  # a dataclass type met before: no is_dataclass per item
    if shape is None and not isinstance(item, (bytes, type)) and is_dataclass(item):
        shape = _shape(type(item))
    if shape is not None:
        obj: Any = item
        value = dumps(obj)  # the one JSON encoding of every sink (dataflows.json_codec)
        event_id = obj.event_id if shape.event_id else ""
        if type(event_id) is not str:
            event_id = str(event_id or "")
        raw_key = obj.key if shape.key else None
        key = raw_key.encode() if type(raw_key) is str else _as_key(raw_key)
        if shape.headers:
            extra = obj.headers
    elif isinstance(item, bytes):
        value, event_id, key = item, "", None
    elif isinstance(item, Mapping):
        value = dumps(item)
        event_id = str(item.get("event_id", "") or "")
        key = _as_key(item.get("key"))
    else:
        raise TypeError(f"cannot serialise a {type(item).__name__} for Kafka")
    if not event_id:  # e.g. a Session: a content id, the same when a replay re-emits it
        event_id = "content:" + hashlib.blake2b((key or b"") + b"\0" + value, digest_size=16).hexdigest()
    own = (EVENT_ID_HEADER, event_id.encode())
    if not extra:
        return _new_message((key, value, (own,), event_id))
    headers: list[tuple[str, bytes]] = []
    for pair in extra:
        if isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[1], bytes):
            if pair[0] not in (EVENT_ID_HEADER, WRITER_HEADER):  # set by the sinks, never copied
                headers.append((str(pair[0]), pair[1]))
    headers.append(own)
    return _new_message((key, value, tuple(headers), event_id))


def take_available(consumer: Consumer, max_messages: int, timeout_s: float) -> list[Message]:
    """Up to `max_messages` messages (events such as end of partition included): those queued now,
    or, if none is, the first to arrive within `timeout_s` ([] after it).

    Not `consumer.consume(max_messages, timeout_s)`, which returns early only with a full batch:
    librdkafka's `rd_kafka_consume_batch_queue` (`rd_kafka_q_serve_rkmessages`, src/rdkafka_queue.c)
    waits out the whole timeout while fewer messages are queued, so each read ending in a partial
    batch (every read of a partition up to its end) pays the full timeout. `poll` returns with the
    first message; `consume(n, 0)` then takes what is queued without waiting.
    """
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    if max_messages <= 1:
        return [first]
    return [first, *consumer.consume(max_messages - 1, 0)]


def header_value(headers: Any, name: str) -> bytes | None:
    """The first value of header `name` in a list of (name, value) pairs."""
    for k, v in headers or ():
        if k == name:
            return v.encode() if isinstance(v, str) else v
    return None


def check_cluster(brokers: Sequence[str], topics: Iterable[str], timeout_s: float = 5.0) -> dict[str, int]:
    """Partition count of each topic; KafkaStartError if unreachable or missing.

    Lists all topics (not topic by topic: asking by name auto-creates a topic
    on brokers that allow it, Tansu does).
    """
    servers = ",".join(brokers)
    try:
        md = AdminClient({"bootstrap.servers": servers}).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaStartError(
            f"Kafka brokers {servers} did not answer metadata within {timeout_s:g}s: {exc.args[0]}"
        ) from None
    counts: dict[str, int] = {}
    for topic in topics:
        meta = md.topics.get(topic)
        if meta is None:
            raise KafkaStartError(f"Kafka topic {topic!r} does not exist on {servers}")
        if meta.error is not None:
            raise KafkaStartError(f"Kafka topic {topic!r} on {servers}: {meta.error.str()}")
        counts[topic] = len(meta.partitions)
    return counts


def topic_config(brokers: Sequence[str], topic: str, timeout_s: float = 5.0) -> dict[str, str]:
    """The topic's configs as DescribeConfigs reports them (name -> value).

    A broker may leave keys out: Tansu 0.6.0 reports only the configs a topic was created with
    (no `retention.ms` by default, DESIGN.md §10), so callers must handle a missing key.
    """
    from confluent_kafka.admin import ConfigResource

    admin = AdminClient({"bootstrap.servers": ",".join(brokers)})
    try:
        futures = admin.describe_configs([ConfigResource("topic", topic)], request_timeout=timeout_s)
        configs = next(iter(futures.values())).result(timeout_s)
    except KafkaException as exc:
        raise KafkaStartError(f"Kafka topic {topic!r}: DescribeConfigs failed: {exc.args[0]}") from None
    return {name: entry.value for name, entry in configs.items() if entry.value is not None}
