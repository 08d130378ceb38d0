"""tests.supervised_flow with a state migration (totals 1 -> 2) that raises: "new code" whose
migration is broken, for `savepoint verify`."""

from __future__ import annotations

from typing import Any

from bytewax.dataflow import Dataflow

from dataflows.config import load_config
from recovery.migrate import register_migration
from tests.supervised_flow import build


def _broken(old: Any) -> Any:
    raise ValueError("total is not a field any more")


register_migration("supervised.totals", 1, 2, _broken)


def flow() -> Dataflow:
    return build(load_config(), version=1)
