"""What a finished run produced, read back from its file outputs.

`summarize(cfg)` reads the JSONL outputs named in a pipeline config (`sink.path`,
`sink.changes-path`, a late-events path, `dlq.path`; only `type: file`
outputs, others are reported as not readable here) and returns a JSON-able
dict:

    {"pipeline": "orders",
     "outputs": {"sink": {"path": ..., "records": 4310, "by_kind": {"upsert": 4000, ...}}, ...},
     "dlq": {"path": ..., "records": 120, "by_code": {...}, "by_stage": {...}}}

`by_kind` counts the `kind` field of each record (Change, TableChange), else
its `type` (Session, LateEvent). `format_summary(d)` renders it for humans.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from dataflows.config import Config
from dataflows.connectors.dlq import read_dead_letters

__all__ = ["format_summary", "summarize"]


def _output_paths(cfg: Config) -> dict[str, str | None]:
    """Name -> file path (None when that output is not a file)."""
    paths: dict[str, str | None] = {}
    is_file = cfg.str("sink.type", "file") == "file"
    if cfg.has("sink.path") or not is_file:
        paths["sink"] = cfg.str("sink.path") if is_file else None
    if cfg.has("sink.changes-path"):
        paths["changes"] = cfg.str("sink.changes-path")
    late = cfg.str("patterns.sessions.late-output", "dlq")
    if late != "dlq":
        paths["late"] = late
    return paths


def _count_file(path: str) -> dict[str, Any]:
    p = Path(path)
    kinds: Counter[str] = Counter()
    records = 0
    if p.exists():
        with p.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                records += 1
                try:
                    doc = json.loads(line)
                except ValueError:
                    kinds["(unreadable)"] += 1
                    continue
                kind = doc.get("kind") or doc.get("type") if isinstance(doc, dict) else None
                kinds[str(kind or "(none)")] += 1
    return {"path": path, "exists": p.exists(), "records": records, "by_kind": dict(sorted(kinds.items()))}


def _count_dlq(cfg: Config) -> dict[str, Any]:
    if cfg.str("dlq.type", "file") != "file" or not cfg.has("dlq.path"):
        return {"path": None, "note": f"dlq type {cfg.str('dlq.type', 'file')!r} is not a file"}
    path = cfg.str("dlq.path")
    codes: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    for letter in read_dead_letters(path):
        codes[letter.error_code] += 1
        stages[letter.stage] += 1
    return {"path": path, "exists": Path(path).exists(), "records": sum(codes.values()),
            "by_code": dict(sorted(codes.items())), "by_stage": dict(sorted(stages.items()))}


def summarize(cfg: Config) -> dict[str, Any]:
    """Counts of the outputs by kind and of the DLQ by error code and stage."""
    outputs: dict[str, Any] = {}
    for name, path in _output_paths(cfg).items():
        if path is None:
            outputs[name] = {"path": None, "note": f"sink type {cfg.str('sink.type')!r} is not a file"}
        else:
            outputs[name] = _count_file(path)
    return {"pipeline": cfg.str("pipeline.name", "?"), "outputs": outputs, "dlq": _count_dlq(cfg)}


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def format_summary(d: dict[str, Any]) -> str:
    """A few lines for a terminal."""
    lines = [f"pipeline {d.get('pipeline', '?')} output:"]
    for name, out in d.get("outputs", {}).items():
        if out.get("path") is None:
            lines.append(f"  {name}: {out.get('note', 'not a file')}")
        else:
            lines.append(f"  {name}: {out['records']} records ({_counts(out['by_kind'])}) in {out['path']}")
    dlq = d.get("dlq", {})
    if dlq.get("path") is None:
        lines.append(f"  dlq: {dlq.get('note', 'not a file')}")
    else:
        lines.append(f"  dlq: {dlq['records']} dead letters in {dlq['path']}")
        lines.append(f"    by code: {_counts(dlq['by_code'])}")
        lines.append(f"    by stage: {_counts(dlq['by_stage'])}")
    return "\n".join(lines)
