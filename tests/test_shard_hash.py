"""One shard / partition hash: every router agrees with `dataflows.shard.shard_of`."""

from __future__ import annotations

import zlib

import pytest

from dataflows.connectors.kafka.common import partition_for
from dataflows.shard import shard_of

KEYS = ["", "order-1", "ünïcode", "a" * 300]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("n", [1, 3, 4, 16])
def test_kafka_partitions_are_the_shards(key: str, n: int) -> None:
    assert partition_for(key.encode(), n) == shard_of(key, n) == shard_of(key.encode(), n)
    assert shard_of(key, n) == zlib.crc32(key.encode()) % n  # the value stored state was routed by


def test_no_key_is_the_empty_key() -> None:
    assert partition_for(None, 7) == shard_of(None, 7) == shard_of("", 7)


def test_partition_for_is_shard_of_not_a_second_implementation() -> None:
    import inspect

    assert "shard_of" in inspect.getsource(partition_for)
