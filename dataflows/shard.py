"""The one shard / partition hash of StreamForge: `shard_of(key, n)` = crc32(UTF-8 key) mod n.

Stable across processes and Python versions (unlike `hash()`), so a key keeps its
shard after a restart or a rescale of the workers. Every router uses it: the Kafka
sinks' output partition (`kafka_common.partition_for`), the state shards of the
patterns. A text key and its UTF-8 bytes land on the same shard; `None` is b"".

    >>> shard_of("order-1", 4) == shard_of(b"order-1", 4)
    True
"""

from __future__ import annotations

import zlib

__all__ = ["shard_of"]


def shard_of(key: str | bytes | None, shards: int) -> int:
    """The shard (0 .. shards-1) of `key`."""
    if key is None:
        data = b""
    elif isinstance(key, str):
        data = key.encode("utf-8", "surrogatepass")
    else:
        data = key
    return zlib.crc32(data) % shards
