"""The orders pipeline end to end on generated data, against a reference computed here.

Reference: the generator labels every line (valid, out_of_order, duplicate, or a
malformed kind); the expected table is the last value per order of the unique
(first-seen event_id) well-formed events, deleted orders removed; each
malformed line is expected in the DLQ with the code of its kind.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from dataflows.config import Config, ConfigError, load_config
from dataflows.connectors.dlq import read_dead_letters
from dataflows.connectors.files import JsonlSource, read_jsonl
from dataflows.dead_letter import DeadLetter, ErrorCode, dead_letter
from dataflows.events import Event, RawRecord
from dataflows.generate import generate_orders
from dataflows.pipelines import orders
from dataflows.pipelines.common import lazy_flow

REPO = Path(__file__).resolve().parents[1]
CODES = {"bad_json": ErrorCode.MALFORMED_JSON, "invalid_utf8": ErrorCode.INVALID_UTF8,
         "missing_key": ErrorCode.MISSING_KEY, "wrong_type": ErrorCode.SCHEMA,
         "oversized": ErrorCode.OVERSIZED}
WELL_FORMED = {"valid", "out_of_order", "duplicate"}


def enrich_or_fail(event: Event) -> dict[str, Any]:
    """A user hook (config patterns.enrich) that fails for big orders."""
    if event.value["amount"] > 400:
        raise ValueError(f"amount {event.value['amount']} needs review")
    return {**event.value, "amount_cents": round(event.value["amount"] * 100)}


def setup(tmp_path: Path, count: int = 1500, seed: int = 11, out: str = "out", **env: str) -> tuple[Config, Any]:
    """Generated data in tmp_path/orders.jsonl; outputs under tmp_path/<out>."""
    gen = generate_orders(count, seed)
    data = tmp_path / "orders.jsonl"
    data.write_bytes(b"".join(line + b"\n" for line in gen.lines))
    out_dir = tmp_path / out
    environ = {
        "STREAMFORGE__SOURCE__PATH": str(data),
        "STREAMFORGE__SINK__PATH": str(out_dir / "table.jsonl"),
        "STREAMFORGE__SINK__CHANGES_PATH": str(out_dir / "changes.jsonl"),
        "STREAMFORGE__DLQ__PATH": str(out_dir / "dlq.jsonl"),
        **env,
    }
    return load_config(REPO / "config" / "orders.yaml", environ=environ), gen


def reference(gen: Any, hook: Any = None) -> tuple[dict[str, dict], Counter[tuple[str, str]], Counter[str]]:
    """(final table, expected dead letters by (code, stage), expected change kinds)."""
    table: dict[str, dict] = {}
    letters: Counter[tuple[str, str]] = Counter()
    changes: Counter[str] = Counter()
    seen: set[str] = set()
    for line, kind in zip(gen.lines, gen.line_kinds, strict=True):
        if kind not in WELL_FORMED:
            letters[(CODES[kind], "orders.parse")] += 1
            continue
        doc = json.loads(line)
        if doc["event_id"] in seen:
            continue
        seen.add(doc["event_id"])
        if hook is not None:
            try:
                doc = hook(Event(doc["order_id"], doc, 0, "", ""))
            except ValueError:
                letters[(ErrorCode.USER_FUNCTION, "orders.enrich")] += 1
                continue
        oid = doc["order_id"]
        if doc["op"] == "delete":
            changes["deleted" if oid in table else "none"] += 1
            table.pop(oid, None)
        else:
            changes["updated" if oid in table else "created"] += 1
            table[oid] = doc
    del changes["none"]
    return table, letters, changes


def outputs(cfg: Config) -> tuple[dict[str, Any], Counter[tuple[str, str]], Counter[str]]:
    table: dict[str, Any] = {}
    for change in read_jsonl(cfg.str("sink.path")):
        assert change["type"] == "TableChange"
        if change["kind"] == "upsert":
            table[change["key"]] = change["value"]
        else:
            table.pop(change["key"], None)
    letters = Counter((d.error_code, d.stage) for d in read_dead_letters(cfg.str("dlq.path")))
    kinds = Counter(c["kind"] for c in read_jsonl(cfg.str("sink.changes-path")))
    return table, letters, kinds


def test_orders_pipeline_matches_the_reference(tmp_path: Path) -> None:
    cfg, gen = setup(tmp_path)
    assert {"duplicate", "out_of_order", "bad_json", "invalid_utf8", "missing_key",
            "wrong_type", "oversized"} <= set(gen.line_kinds)
    run_main(orders.build_flow(cfg))
    table, letters, kinds = outputs(cfg)
    want_table, want_letters, want_kinds = reference(gen)
    assert table == want_table
    assert letters == want_letters
    assert kinds == want_kinds
    bad = [d for d in read_dead_letters(cfg.str("dlq.path")) if d.error_code == ErrorCode.OVERSIZED]
    raw_lines = Path(cfg.str("source.path")).read_bytes().split(b"\n")
    assert all(d.payload == raw_lines[d.coords["line"] - 1] for d in bad)  # original bytes
    assert all(d.event_id == f"file:{cfg.str('source.path')}:{d.coords['line']}" for d in bad)


def test_user_hook_failures_go_to_the_dlq_and_the_flow_goes_on(tmp_path: Path) -> None:
    cfg, gen = setup(tmp_path, count=800, seed=5,
                     STREAMFORGE__PATTERNS__ENRICH=f"{__name__}:enrich_or_fail")
    run_main(orders.build_flow(cfg))
    table, letters, _ = outputs(cfg)
    want_table, want_letters, _ = reference(gen, enrich_or_fail)
    assert want_letters[(ErrorCode.USER_FUNCTION, "orders.enrich")] > 0
    assert table == want_table and letters == want_letters
    hooked = [d for d in read_dead_letters(cfg.str("dlq.path")) if d.error_code == ErrorCode.USER_FUNCTION]
    assert all("needs review" in d.error_message and "enrich_or_fail" in d.stacktrace for d in hooked)
    assert all(json.loads(d.payload)["amount"] > 400 and d.exception_class == "ValueError" for d in hooked)


def per_key(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        out.setdefault(d["key"], []).append(d)
    return out


def _records(cfg: Config) -> list[Any]:
    part = JsonlSource(cfg.str("source.path"), batch_size=10_000).build_part("in", cfg.str("source.path"), None)
    return part.next_batch()


def test_abort_and_resume_gives_the_same_outputs_as_an_uninterrupted_run(tmp_path: Path) -> None:
    ref_cfg, gen = setup(tmp_path, count=1200, seed=3, out="ref")
    run_main(orders.build_flow(ref_cfg))
    cfg, _ = setup(tmp_path, count=1200, seed=3, out="crash")
    records = _records(cfg)
    items = records[:500] + [TestingSource.ABORT()] + records[500:900] + [TestingSource.ABORT()] + records[900:]
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 2)
    for _ in range(3):  # abort, abort, finish
        flow = orders.build_flow(cfg, source=TestingSource(items, batch_size=50))
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(recovery))
    for key in ("sink.path", "sink.changes-path"):
        # the same lines per order, in the same order, nothing twice (the
        # interleaving of different orders depends on batching)
        assert per_key(read_jsonl(cfg.str(key))) == per_key(read_jsonl(ref_cfg.str(key))), key

    def letters(c: Config) -> list[tuple[str, str, str]]:
        return sorted((d.event_id, d.error_code, d.stage) for d in read_dead_letters(c.str("dlq.path")))

    assert letters(cfg) == letters(ref_cfg)


def test_two_workers_give_the_same_table_and_dlq(tmp_path: Path) -> None:
    cfg, gen = setup(tmp_path, count=1200, seed=8)
    cluster_main(orders.build_flow(cfg), [], 0, worker_count_per_proc=2)
    table, letters, kinds = outputs(cfg)
    want_table, want_letters, want_kinds = reference(gen)
    assert (table, letters, kinds) == (want_table, want_letters, want_kinds)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STREAMFORGE__PATTERNS__DEDUP__TTL": "soon"}, "patterns.dedup.ttl: bad duration"),
        ({"STREAMFORGE__PATTERNS__DEDUP__TTL": "0s"}, "patterns.dedup.ttl: must be > 0"),
        ({"STREAMFORGE__PATTERNS__ENRICH": "no_such_module:f"}, "patterns.enrich: cannot load"),
        ({"STREAMFORGE__PATTERNS__ENRICH": "json"}, "patterns.enrich: expected 'module:function'"),
        ({"STREAMFORGE__LIMITS__MAX_RECORD_BYTES": "big"}, "limits.max-record-bytes: bad size"),
        ({"STREAMFORGE__SOURCE__TYPE": "ftp"}, "source.type: must be one of"),
        ({"STREAMFORGE__DLQ__TYPE": "mongo"}, "dlq.type: must be one of"),
        ({"STREAMFORGE__PATTERNS__MATERIALIZER__SHARDS": "0"}, "patterns.materializer.shards: must be >= 1"),
    ],
)
def test_bad_config_fails_at_flow_construction_naming_the_key(tmp_path: Path, env: dict, message: str) -> None:
    cfg, _ = setup(tmp_path, count=10, **env)
    with pytest.raises(ConfigError) as info:
        orders.build_flow(cfg)
    assert str(info.value).startswith(message)


def test_module_flow_is_built_from_streamforge_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, _ = setup(tmp_path, count=50)
    path = tmp_path / "orders.yaml"
    path.write_text(json.dumps(cfg.data))  # JSON is YAML
    monkeypatch.setenv("STREAMFORGE_CONFIG", str(path))
    monkeypatch.setenv("STREAMFORGE__PIPELINE__NAME", "orders-env")
    # a fresh lazy `flow` (the module's own one may have been built already)
    monkeypatch.setattr(orders, "__getattr__", lazy_flow("orders", orders.build_flow))
    flow = orders.flow
    assert flow.flow_id == "orders-env"
    run_main(flow)
    assert read_jsonl(cfg.str("sink.path"))


def test_mixed_source_items_events_pass_dead_letters_join_unknown_items_are_dead_letters(tmp_path: Path) -> None:
    """TestingSource/TestingSink stand in for a Mongo-like source (Events) and a Kafka-like
    source error (a DeadLetter in the stream)."""
    cfg, _ = setup(tmp_path, count=10)
    doc = {"event_id": "e1", "order_id": "o-1", "op": "insert", "ts": 1000, "status": "created", "amount": 1.5}
    raw = RawRecord(json.dumps(doc).encode(), "file:x:1", "file:x")
    mongo_like = Event("o-2", {"order_id": "o-2", "status": "paid"}, 2000, "mongo:db.orders:tok1", "mongo:db.orders",
                       op="insert")
    source_error = dead_letter(RawRecord(b"", "kafka:t:0:5", "kafka:t"), code=ErrorCode.SOURCE_ERROR,
                               stage="orders.source", pipeline="orders", message="broker gone")
    table: list[Any] = []
    letters: list[DeadLetter] = []
    flow = orders.build_flow(cfg, source=TestingSource([raw, mongo_like, source_error, 42, b"{"]),
                             sink=TestingSink(table), dlq_sink=TestingSink(letters))
    run_main(flow)
    assert sorted((c.kind, c.key) for c in table) == [("upsert", "o-1"), ("upsert", "o-2")]
    assert sorted((d.error_code, d.stage) for d in letters) == [
        (ErrorCode.SOURCE_ERROR, "orders.source"), (ErrorCode.UNSUPPORTED_TYPE, "orders.source"),
        (ErrorCode.UNSUPPORTED_TYPE, "orders.source")]
    assert {d.payload for d in letters if d.error_code == ErrorCode.UNSUPPORTED_TYPE} == {b"42", b"b'{'"}
