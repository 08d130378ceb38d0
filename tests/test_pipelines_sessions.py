"""The sessions pipeline end to end on generated clicks, against a reference computed here.

Reference (from the SessionAnalyzer's definition, computed directly): per user,
in arrival order, an event is late iff its time is below the user's newest
accepted time minus the allowed lateness; the final sessions are the accepted
times of each user split wherever two consecutive times are `gap` or more
apart. Runs use `advance-on-idle: false` so the output does not depend on the
wall clock.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, cluster_main, run_main

from dataflows.config import Config, ConfigError, load_config
from dataflows.connectors.dlq import read_dead_letters
from dataflows.connectors.files import JsonlSource, read_jsonl
from dataflows.dead_letter import ErrorCode
from dataflows.generate import generate_clicks
from dataflows.pipelines import sessions

REPO = Path(__file__).resolve().parents[1]
GAP_MS, LATENESS_MS = 10 * 60_000, 30 * 60_000
PARSE_ERRORS = {"bad_json", "invalid_utf8", "missing_key", "wrong_type", "oversized"}


def setup(tmp_path: Path, count: int = 1500, seed: int = 4, out: str = "out", **env: str) -> tuple[Config, Any]:
    gen = generate_clicks(count, seed)
    data = tmp_path / "clicks.jsonl"
    data.write_bytes(b"".join(line + b"\n" for line in gen.lines))
    out_dir = tmp_path / out
    environ = {
        "STREAMFORGE__SOURCE__PATH": str(data),
        "STREAMFORGE__SINK__PATH": str(out_dir / "sessions.jsonl"),
        "STREAMFORGE__DLQ__PATH": str(out_dir / "dlq.jsonl"),
        "STREAMFORGE__PATTERNS__SESSIONS__GAP": "10m",
        "STREAMFORGE__PATTERNS__SESSIONS__ALLOWED_LATENESS": "30m",
        "STREAMFORGE__PATTERNS__SESSIONS__ADVANCE_ON_IDLE": "false",
        **env,
    }
    return load_config(REPO / "config" / "sessions.yaml", environ=environ), gen


def _ms(ts: str) -> int:
    return int(datetime.fromisoformat(ts).timestamp() * 1000 + 0.5)


def reference(gen: Any) -> tuple[set[tuple[Any, ...]], list[str]]:
    """(final sessions as (key, start, end, count, actions, revenue), late event lines)."""
    accepted: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    newest: dict[str, int] = {}
    late: list[str] = []
    seen: set[str] = set()
    for n, (line, kind) in enumerate(zip(gen.lines, gen.line_kinds, strict=True), 1):
        if kind in PARSE_ERRORS:
            continue
        doc = json.loads(line)
        if doc["event_id"] in seen:
            continue
        seen.add(doc["event_id"])
        key, t = doc["user_id"], _ms(doc["ts"])
        if key in newest and t < newest[key] - LATENESS_MS:
            late.append(str(n))
            continue
        newest[key] = max(newest.get(key, t), t)
        accepted[key].append((t, doc))
    out: set[tuple[Any, ...]] = set()
    for key, events in accepted.items():
        events.sort(key=lambda e: e[0])
        groups: list[list[tuple[int, dict]]] = [[events[0]]]
        for prev, cur in zip(events, events[1:], strict=False):
            if cur[0] - prev[0] >= GAP_MS:
                groups.append([])
            groups[-1].append(cur)
        for g in groups:
            actions = Counter(d["action"] for _, d in g)
            revenue = round(sum(d.get("amount", 0) for _, d in g), 2)
            out.add((key, g[0][0], g[-1][0], len(g), tuple(sorted(actions.items())), revenue))
    return out, sorted(late)


def final_sessions(path: str) -> set[tuple[Any, ...]]:
    """Last revision per session id, minus sessions absorbed by a bridge."""
    last: dict[str, dict] = {}
    for s in read_jsonl(path):
        assert s["type"] == "Session"
        if s["session_id"] not in last or s["revision"] > last[s["session_id"]]["revision"]:
            last[s["session_id"]] = s
    spans = list(last.values())

    def absorbed(s: dict) -> bool:
        return any(o is not s and o["key"] == s["key"] and o["start_ms"] <= s["start_ms"]
                   and s["end_ms"] <= o["end_ms"] and o["count"] > s["count"] for o in spans)

    return {(s["key"], s["start_ms"], s["end_ms"], s["count"],
             tuple(sorted(s["aggregate"]["actions"].items())), round(s["aggregate"]["revenue"], 2))
            for s in spans if not absorbed(s)}


def late_lines(cfg: Config) -> list[str]:
    return sorted(d.event_id.rsplit(":", 1)[1] for d in read_dead_letters(cfg.str("dlq.path"))
                  if d.error_code == ErrorCode.LATE_EVENT)


def test_sessions_pipeline_matches_the_reference(tmp_path: Path) -> None:
    cfg, gen = setup(tmp_path)
    assert {"too_late", "out_of_order", "duplicate"} <= set(gen.line_kinds)
    run_main(sessions.build_flow(cfg))
    want_sessions, want_late = reference(gen)
    assert final_sessions(cfg.str("sink.path")) == want_sessions
    assert want_late and late_lines(cfg) == want_late
    letters = list(read_dead_letters(cfg.str("dlq.path")))
    assert Counter(d.stage for d in letters if d.error_code != ErrorCode.LATE_EVENT) == {
        "sessions.parse": sum(1 for k in gen.line_kinds if k in PARSE_ERRORS)}
    late = [d for d in letters if d.error_code == ErrorCode.LATE_EVENT]
    assert all(d.stage == "sessions.sessions" and d.coords["watermark_ms"] - LATENESS_MS
               > d.coords["event_time_ms"] for d in late)
    revisions = [s["revision"] for s in read_jsonl(cfg.str("sink.path"))]
    assert max(revisions) >= 1  # late-but-allowed events updated emitted sessions


def test_late_events_can_go_to_their_own_sink(tmp_path: Path) -> None:
    late_path = tmp_path / "late.jsonl"
    cfg, gen = setup(tmp_path, count=800, STREAMFORGE__PATTERNS__SESSIONS__LATE_OUTPUT=str(late_path))
    run_main(sessions.build_flow(cfg))
    _, want_late = reference(gen)
    late = read_jsonl(late_path)
    assert sorted(d["event"]["event_id"].rsplit(":", 1)[1] for d in late) == want_late
    assert all(d["type"] == "LateEvent" and d["reason"] == "beyond_allowed_lateness" for d in late)
    assert late_lines(cfg) == []


def test_abort_and_resume_gives_the_same_sessions_and_dlq(tmp_path: Path) -> None:
    ref_cfg, gen = setup(tmp_path, count=1200, out="ref")
    run_main(sessions.build_flow(ref_cfg))
    cfg, _ = setup(tmp_path, count=1200, out="crash")
    path = cfg.str("source.path")
    records = JsonlSource(path, batch_size=10_000).build_part("in", path, None).next_batch()
    items = records[:400] + [TestingSource.ABORT()] + records[400:1000] + [TestingSource.ABORT()] + records[1000:]
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 2)
    for _ in range(3):
        flow = sessions.build_flow(cfg, source=TestingSource(items, batch_size=40))
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(recovery))
    assert final_sessions(cfg.str("sink.path")) == final_sessions(ref_cfg.str("sink.path"))
    assert Counter(s["session_id"] for s in read_jsonl(cfg.str("sink.path"))) == Counter(
        s["session_id"] for s in read_jsonl(ref_cfg.str("sink.path")))  # no duplicate emissions

    def letters(c: Config) -> list[tuple[str, str, str]]:
        return sorted((d.event_id, d.error_code, d.stage) for d in read_dead_letters(c.str("dlq.path")))

    assert letters(cfg) == letters(ref_cfg)


def test_two_workers_give_the_same_sessions(tmp_path: Path) -> None:
    cfg, gen = setup(tmp_path, count=1200, seed=9)
    cluster_main(sessions.build_flow(cfg), [], 0, worker_count_per_proc=2)
    want_sessions, want_late = reference(gen)
    assert final_sessions(cfg.str("sink.path")) == want_sessions
    assert late_lines(cfg) == want_late


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STREAMFORGE__PATTERNS__SESSIONS__GAP": "0s"}, "patterns.sessions.gap: must be > 0"),
        ({"STREAMFORGE__PATTERNS__SESSIONS__GAP": "long"}, "patterns.sessions.gap: bad duration"),
        ({"STREAMFORGE__PATTERNS__SESSIONS__ALLOWED_LATENESS": "-1"}, "patterns.sessions.allowed-lateness: must be >= 0"),
        ({"STREAMFORGE__PATTERNS__SESSIONS__ADVANCE_ON_IDLE": "sometimes"}, "patterns.sessions.advance-on-idle: expected true"),
        ({"STREAMFORGE__SINK__TYPE": "ftp"}, "sink.type: must be one of"),
    ],
)
def test_bad_config_fails_at_flow_construction_naming_the_key(tmp_path: Path, env: dict, message: str) -> None:
    cfg, _ = setup(tmp_path, count=10, **env)
    with pytest.raises(ConfigError) as info:
        sessions.build_flow(cfg)
    assert str(info.value).startswith(message)


def test_a_flow_refuses_another_flows_config(tmp_path: Path) -> None:
    """README's "Running a flow directly" exported config/orders.yaml and then ran the sessions
    flow: it read the orders config and overwrote the orders table with sessions. A flow
    refuses a config whose `pipeline.flow` names another flow: one line, exit 2, no output."""
    import os
    import shutil
    import subprocess
    import sys

    (tmp_path / "data").mkdir()
    shutil.copy(REPO / "data" / "orders.jsonl", tmp_path / "data" / "orders.jsonl")
    env = {**os.environ, "STREAMFORGE_CONFIG": str(REPO / "config" / "orders.yaml"),
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.pipelines.sessions:flow"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert not (tmp_path / ".streamforge").exists()  # nothing written, least of all the orders table
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("streamforge: cannot start: pipeline.flow: ")
    assert "dataflows.pipelines.orders:flow" in lines[0] and "dataflows.pipelines.sessions:flow" in lines[0]


@pytest.mark.parametrize(("pipeline", "refused"), [
    ({"name": "sessions", "flow": "dataflows.pipelines.sessions:flow"}, False),
    ({"name": "clicks-eu", "flow": "dataflows.pipelines.sessions:flow"}, False),
    ({"name": "clicks-eu"}, False),
    ({"name": "orders"}, True),  # no pipeline.flow: the name's flow, dataflows.pipelines.orders:flow
    ({"name": "sessions", "flow": "dataflows.pipelines.orders:flow"}, True),
])
def test_flow_config_check(pipeline: dict[str, str], refused: bool) -> None:
    from dataflows.pipelines.common import check_flow_config

    cfg = Config({"pipeline": pipeline}, "test.yaml")
    if refused:
        with pytest.raises(ConfigError, match=r"^pipeline\.flow: test\.yaml is the config of "):
            check_flow_config(cfg, "sessions")
    else:
        check_flow_config(cfg, "sessions")


def upsert_retract(path: str) -> dict[str, dict]:
    """What a consumer keyed by `session_id` holds after reading the sessions output:
    a Session upserts its id (a higher revision wins), a SessionRetraction deletes it."""
    table: dict[str, dict] = {}
    for s in read_jsonl(path):
        assert s["type"] in ("Session", "SessionRetraction")
        prev = table.get(s["session_id"])
        if prev is not None and prev["revision"] >= s["revision"]:
            continue
        table[s["session_id"]] = s
    return {k: s for k, s in table.items() if s["type"] == "Session"}


def test_a_bridge_retracts_the_absorbed_session(tmp_path: Path) -> None:
    """Two emitted sessions bridged by a late event: the merged one is re-emitted under the
    earlier id and the absorbed id is retracted, so a consumer keyed by session_id counts each
    click once."""
    lines = [{"user_id": "u", "event_id": f"e{i}", "ts": f"2026-01-01T00:{m:02d}:00Z", "action": "view"}
             for i, m in enumerate([0, 15, 40, 8])]  # 8 bridges [0] and [15] (gap 10m), both closed by 40
    data = tmp_path / "clicks.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in lines))
    sink = tmp_path / "sessions.jsonl"
    cfg = load_config(REPO / "config" / "sessions.yaml", environ={
        "STREAMFORGE__SOURCE__PATH": str(data), "STREAMFORGE__SINK__PATH": str(sink),
        "STREAMFORGE__DLQ__PATH": str(tmp_path / "dlq.jsonl"),
        "STREAMFORGE__PATTERNS__SESSIONS__GAP": "10m",
        "STREAMFORGE__PATTERNS__SESSIONS__ALLOWED_LATENESS": "35m",
        "STREAMFORGE__PATTERNS__SESSIONS__ADVANCE_ON_IDLE": "false"})
    run_main(sessions.build_flow(cfg))
    out = read_jsonl(sink)
    t15 = _ms("2026-01-01T00:15:00+00:00")
    assert {"type": "SessionRetraction", "key": "u", "session_id": f"u:{t15}", "revision": 1,
            "merged_into": f"u:{_ms('2026-01-01T00:00:00+00:00')}"} in out
    table = upsert_retract(str(sink))
    assert sorted((s["start_ms"], s["count"]) for s in table.values()) == [
        (_ms("2026-01-01T00:00:00+00:00"), 3), (_ms("2026-01-01T00:40:00+00:00"), 1)]
    assert sum(s["count"] for s in table.values()) == len(lines)


def test_upsert_retract_consumer_matches_the_reference(tmp_path: Path) -> None:
    cfg, gen = setup(tmp_path, count=1500, seed=4)
    run_main(sessions.build_flow(cfg))
    want_sessions, _ = reference(gen)
    table = upsert_retract(cfg.str("sink.path"))
    assert {(s["key"], s["start_ms"], s["end_ms"], s["count"],
             tuple(sorted(s["aggregate"]["actions"].items())), round(s["aggregate"]["revenue"], 2))
            for s in table.values()} == want_sessions
