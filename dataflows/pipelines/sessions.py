"""The sessions pipeline: clickstream -> per-user sessions with allowed lateness.

    source -> parse -> lane: [dedup] -> sessions -> sink (Session revisions, SessionRetractions)
                                                \\-> late events -> DLQ (LATE_EVENT) or a late sink
    every dead letter (source, parse, late) -> one DLQ sink

- parse: key `parse.key-field` (user_id), time `parse.time-field` (ts);
  `parse.id-field` (event_id) is required when dedup is on.
- dedup (`patterns.dedup.ttl`, optional): a redelivered click (same id) is
  dropped, in the user's lane: dedup and sessions are ONE stateful step per
  user (`dataflows.flow.sessions_lane`, `patterns/lane.py`), one state object
  per user.
- one pipeline clock (`dataflows/clock.py`) for dedup expiry and the idle
  advance of sessions: a restart after any downtime replays the same
  decisions (`STREAMFORGE_CLOCK_SKEW_SECONDS` simulates downtime in tests).
- sessions (`patterns.sessions.gap`, `.allowed-lateness`, `.advance-on-idle`):
  SessionAnalyzer; a session's `aggregate` is `ClickStats` as a dict
  (`{"actions": {action: n}, "revenue": sum of amount, "pages": distinct}`).
  A late event inside the allowed lateness updates an emitted session, which
  is emitted again with `revision + 1`. The sink gets an upsert/retract stream
  keyed by `session_id`: a `Session` upserts its id (the highest revision
  wins); a late event that bridges two sessions re-emits the merged one under
  the earlier id and, for the absorbed one if it was emitted,
  `SessionRetraction(key, session_id, revision, merged_into)`: delete that id
  (its events are in `merged_into` now, counted once).
- late events (`patterns.sessions.late-output`): `dlq` (default) turns them
  into LATE_EVENT dead letters; any other value is a JSONL path for the
  `LateEvent`s.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import Sink

from dataflows.clock import PipelineClock
from dataflows.config import Config, ConfigError
from dataflows.connectors.dlq import late_to_dead_letter
from dataflows.connectors.files import JsonlSink
from dataflows.events import Event
from dataflows.flow import sessions_lane
from dataflows.pipelines.common import (
    ParseOptions,
    dedup_ttl_ms,
    ingest,
    lazy_flow,
    load_hook,
)
from dataflows.pipelines.io import build_dlq_sink, build_sink, build_source, write_output

__all__ = ["build_flow", "click_initial", "click_merge", "click_stats"]

NAME = "sessions"
OPTIONAL_TYPES: dict[str, Any] = {"action": str, "page": str, "amount": (int, float)}


def click_initial() -> dict[str, Any]:
    """Aggregate of an empty session."""
    return {"actions": {}, "revenue": 0.0, "pages": []}


def click_stats(acc: dict[str, Any], event: Event) -> dict[str, Any]:
    """Fold one click into a session aggregate (a new dict: state is never mutated)."""
    v = event.value
    action = str(v.get("action", "unknown"))
    actions = dict(acc["actions"])
    actions[action] = actions.get(action, 0) + 1
    pages = acc["pages"]
    page = v.get("page")
    if page is not None and page not in pages:
        pages = sorted([*pages, page])
    return {"actions": actions, "revenue": round(acc["revenue"] + float(v.get("amount") or 0), 2),
            "pages": pages}


def click_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Aggregate of two bridged sessions."""
    actions = dict(a["actions"])
    for k, n in b["actions"].items():
        actions[k] = actions.get(k, 0) + n
    return {"actions": actions, "revenue": round(a["revenue"] + b["revenue"], 2),
            "pages": sorted(set(a["pages"]) | set(b["pages"]))}


class _LateToDeadLetter:
    def __init__(self, pipeline: str, stage: str) -> None:
        self.pipeline, self.stage = pipeline, stage

    def __call__(self, late: Any) -> Any:
        return late_to_dead_letter(late, self.pipeline, self.stage)


def _ms(cfg: Config, key: str, default: str, *, positive: bool) -> int:
    seconds = cfg.duration(key, default)
    if seconds < 0 or (positive and seconds == 0):
        raise ConfigError(f"{key}: must be {'> 0' if positive else '>= 0'}, got {seconds}s (in {cfg.origin})")
    return int(seconds * 1000)


def build_flow(
    cfg: Config,
    *,
    source: Any = None,
    sink: Sink[Any] | None = None,
    dlq_sink: Sink[Any] | None = None,
    late_sink: Sink[Any] | None = None,
) -> Dataflow:
    """The sessions dataflow; every config error is raised here, naming its key."""
    name = cfg.str("pipeline.name", NAME)
    options = ParseOptions.from_config(cfg, key_field="user_id", time_field="ts", id_field="event_id")
    ttl_ms = dedup_ttl_ms(cfg, None)
    if ttl_ms is not None and not options.id_field:
        raise ConfigError(f"parse.id-field: dedup needs the event id field (in {cfg.origin})")
    if ttl_ms is None:
        options = dataclasses.replace(options, id_field=None)
    gap_ms = _ms(cfg, "patterns.sessions.gap", "30m", positive=True)
    lateness_ms = _ms(cfg, "patterns.sessions.allowed-lateness", "0s", positive=False)
    advance = cfg.bool("patterns.sessions.advance-on-idle", True)
    late_output = cfg.str("patterns.sessions.late-output", "dlq")
    hook = load_hook(cfg, "patterns.enrich")
    if hook is not None:
        raise ConfigError(f"patterns.enrich: not supported by the sessions pipeline (in {cfg.origin})")
    source = source if source is not None else build_source(cfg.section("source"), name)
    sink = sink if sink is not None else build_sink(cfg.section("sink"), name)
    dlq_sink = dlq_sink if dlq_sink is not None else build_dlq_sink(cfg.section("dlq"), name)
    if late_sink is None and late_output != "dlq":
        late_sink = JsonlSink(late_output)

    clock = PipelineClock()
    flow = Dataflow(name)
    events, ingest_dlq = ingest(flow, source, pipeline=name, options=options, optional=OPTIONAL_TYPES)
    sessions, late = sessions_lane(
        "lane", events, pipeline=name, gap_ms=gap_ms, allowed_lateness_ms=lateness_ms,
        ttl_ms=ttl_ms, id_field=options.id_field, aggregate=click_stats, initial=click_initial,
        merge=click_merge, advance_on_idle=advance, clock=clock,
    )
    write_output("sink", sessions, sink)
    dead = [ingest_dlq]
    if late_sink is not None:
        write_output("late_sink", late, late_sink)
    else:
        dead.append(op.map("late_dlq", late, _LateToDeadLetter(name, f"{name}.sessions")))
    write_output("dlq_sink", op.merge("dlq", *dead), dlq_sink)
    return flow


__getattr__ = lazy_flow(NAME, build_flow)
