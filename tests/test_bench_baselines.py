"""The benches' hand-written baselines do the work they stand for.

A baseline that silently did less (read part of the input, dropped the state) would make a
ceiling look lower than it is, and a target judged against it look out of reach.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.kafka import bare_bytewax_seconds, fill, one_key_bytewax_seconds
from bench.peers import expected_outputs, order_doc
from dataflows.generate import generate_orders
from tests.fixtures.kafka import read_topic


@pytest.mark.parametrize("flow", [bare_bytewax_seconds, one_key_bytewax_seconds],
                         ids=["bare_bytewax", "one_key_bytewax"])
def test_bare_bytewax_emits_each_new_event_of_each_order_once(
    flow: Callable[..., float], make_topic: Any, kafka_broker: Any, tmp_path: Path
) -> None:
    lines = generate_orders(400, seed=3).lines  # with redeliveries and bad lines
    b = kafka_broker.bootstrap
    src, out = make_topic(partitions=4), make_topic(partitions=4)
    fill(b, src, lines, 4)
    assert flow(b, src, 4, recovery_dir=tmp_path, out=out) > 0
    got = read_topic(b, out)
    keys = [str((order_doc(line) or {}).get("order_id", "")) for line in lines]
    assert len(got) == expected_outputs(lines, keys) < len(lines)
    pairs = {(m.key(), orjson.loads(m.value())["event_id"]) for m in got}
    assert len(pairs) == len(got)  # no event emitted twice
