"""Versions of tests.supervised_flow whose stateful steps differ, for the step-id check.

- `flow_v1`: the supervised flow (`supervised.totals` keeps each user's Totals).
- `flow_renamed`: "version 2": the same logic, its stateful step renamed to
  `sums` (state ids `supervised.sums.stateful_batch`).
- `flow_added`: version 1 plus a new stateful step `maxes` (starts empty).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.connectors.files import FileSink
from bytewax.dataflow import Dataflow

from dataflows.config import Config, load_config
from tests.supervised_flow import LinesSource, _accumulate, _render


def _max(state: int | None, rec: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    top = max(state or 0, int(rec["amount"]))
    return top, {**rec, "max": top}


def build(cfg: Config, *, totals_step: str = "totals", with_max: bool = False) -> Dataflow:
    src = cfg.section("source")
    flow = Dataflow("supervised")
    recs = op.input("inp", flow, LinesSource(Path(src.str("path")), tail=False,
                                             delay=src.duration("delay", 0.0),
                                             batch=src.int("batch-size", 5, minimum=1)))
    keyed = op.key_on("by_user", recs, lambda r: str(r["user"]))
    summed = op.stateful_map(totals_step, keyed, _accumulate)
    if with_max:
        summed = op.stateful_map("maxes", summed, _max)
    out = op.map("fmt", summed, lambda kv: ("out", _render(kv[1], 1)))
    op.output("out", out, FileSink(Path(cfg.str("sink.path"))))
    return flow


def flow_v1() -> Dataflow:
    return build(load_config())


def flow_renamed() -> Dataflow:
    return build(load_config(), totals_step="sums")


def flow_added() -> Dataflow:
    return build(load_config(), with_max=True)


def flow_unreachable() -> Dataflow:
    """As built while Kafka is down (the message of dataflows.connectors.kafka.common.check_cluster)."""
    from dataflows.config import ConfigError

    raise ConfigError("source.brokers: 127.0.0.1:1 did not answer metadata within 5s")
