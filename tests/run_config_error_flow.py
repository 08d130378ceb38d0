"""tests.supervised_flow whose sink refuses its resume state when the run starts (as the
exactly-once writer does when the output topic's partition count changed): a `ConfigError`
raised inside Bytewax's `build_part`, after the flow was built."""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from dataflows.config import ConfigError, load_config
from tests.supervised_flow import build


class _Refusing(FixedPartitionedSink[Any, None]):
    def list_parts(self) -> list[str]:
        return ["only"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> StatefulSinkPartition[Any, None]:
        raise ConfigError("sink.partitions: the output topic has 8 partitions, the state was written for 4")


def flow() -> Dataflow:
    built = build(load_config(), version=1)
    op.output("refusing", op.input("refusing_in", built, _source()), _Refusing())
    return built


def _source() -> Any:
    from bytewax.testing import TestingSource

    return TestingSource([("k", 1)])
