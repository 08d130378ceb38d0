"""docs/dlq-replay-guide.md, step by step, on the embedded default: the orders pipeline reading a
JSONL file, its DLQ a JSONL file. Every command of the guide runs here as a user runs it
(`python -m streamforge_ops ...` in a subprocess, or `main([...])`).

v1 has `limits.max-record-bytes: 300`, so three large orders become OVERSIZED dead letters
(and one broken line MALFORMED_JSON). The fix (v2) raises the limit; the dead letters are
replayed into the input file twice; the pipeline resumes after each replay: every order is
in the table exactly once, with the event id it had the first time (the Deduplicator drops
the second replay: same `event_id` field).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamforge_ops.cli import main
from tests.supervisor_harness import REPO

LARGE = (3, 6, 9)


def _order(i: int) -> dict[str, Any]:
    rec = {"event_id": f"oe-{i}", "op": "insert", "ts": f"2026-01-01T00:00:{i:02d}Z",
           "order_id": f"o-{i}", "status": "created", "amount": 10 + i}
    if i in LARGE:
        rec["note"] = "n" * 400
    return rec


def _config(root: Path, name: str, limit: str) -> Path:
    out = root / "out"
    data = {
        "pipeline": {"name": "orders", "flow": "dataflows.pipelines.orders:flow", "code-version": name},
        "source": {"type": "file", "path": str(root / "orders.jsonl")},
        "sink": {"type": "file", "path": str(out / "table.jsonl")},
        "dlq": {"type": "file", "path": str(out / "dlq.jsonl")},
        "limits": {"max-record-bytes": limit},
        "recovery": {"dir": str(root / "recovery"), "partitions": 2, "snapshot-interval": "1s"},
        "checkpoints": {"dir": f"file://{root / 'store'}", "interval": "60s", "timeout": "30s"},
        "savepoints": {"dir": f"file://{root / 'store'}", "on-cancel": False},
        "metrics": {"port": 0, "host": "127.0.0.1"},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(config: Path) -> None:
    """`streamforge run --config CONFIG` until the bounded input ends."""
    done = subprocess.run([sys.executable, "-m", "streamforge_ops", "run", "--config", str(config)],
                          cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr


def _cli(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> Any:
    assert main(list(argv)) == code
    out, err = capsys.readouterr()
    return json.loads(out) if code == 0 and "--json" in argv else err


def _table(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (root / "out" / "table.jsonl").read_text().splitlines()]


def test_guide_on_the_file_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "orders.jsonl"
    src.write_text("".join(json.dumps(_order(i)) + "\n" for i in range(1, 11)) + "{broken\n")
    v1, v2 = _config(tmp_path, "v1", "300B"), _config(tmp_path, "v2", "16KiB")
    _run(v1)
    assert sorted(r["key"] for r in _table(tmp_path)) == sorted(f"o-{i}" for i in range(1, 11) if i not in LARGE)

    # 1. inspect
    summary = _cli(capsys, "dlq", "inspect", "--config", str(v1), "--json")
    assert summary["by_error_code"] == {"OVERSIZED": 3, "MALFORMED_JSON": 1}
    ids = {s["event_id"] for s in summary["samples"]["OVERSIZED"]}
    assert ids == {f"file:{src}:{i}" for i in LARGE}

    # 2. fix: v2 raises limits.max-record-bytes (same recovery dir, same state)
    # 3. dry run: counts what would go where, writes nothing
    before = src.read_bytes()
    dry = _cli(capsys, "dlq", "replay", "--config", str(v2), "--error-code", "OVERSIZED", "--dry-run",
               "--json", "--no-progress")
    assert dry["by_topic"] == {str(src): 3} and dry["replayed"] == 0
    assert src.read_bytes() == before

    # 4. filtered, rate-limited replay into the pipeline's input, then resume the pipeline
    replay_start = datetime.now(UTC).isoformat()
    for tag in ("r1", "r2"):  # twice: the second replay is dropped by the Deduplicator
        rep = _cli(capsys, "dlq", "replay", "--config", str(v2), "--error-code", "OVERSIZED",
                   "--rate", "50", "--tag", tag, "--json", "--no-progress")
        assert rep["replayed"] == 3 and rep["matched"] == 3 and rep["total"] == 4
        _run(v2)

    # 5. verify: each order once, the replayed ones with their original event ids
    table = _table(tmp_path)
    assert sorted(r["key"] for r in table) == sorted(f"o-{i}" for i in range(1, 11))
    by_key = {r["key"]: r for r in table}
    for i in LARGE:
        # a derived id: the source event's id (file:PATH:LINE of v1's read) plus the step
        assert by_key[f"o-{i}"]["event_id"] == f"file:{src}:{i}/orders.materialize"
        assert by_key[f"o-{i}"]["value"]["note"] == "n" * 400
    # no new dead letters since the fix: the DLQ still holds exactly the four of v1
    after = _cli(capsys, "dlq", "inspect", "--config", str(v2), "--json")
    assert after["by_error_code"] == {"OVERSIZED": 3, "MALFORMED_JSON": 1}
    assert _cli(capsys, "dlq", "inspect", "--config", str(v2), "--since", replay_start, "--json")["matched"] == 0

    # 6. clean up: archive what was replayed; the input keeps its replay lines (the source's
    # saved offset is past them: shortening the file would fail the next start, FileShrankError)
    archive = _cli(capsys, "dlq", "inspect", "--config", str(v2), "--error-code", "OVERSIZED",
                   "--samples", "1000", "--json")
    assert sorted(s["event_id"] for s in archive["samples"]["OVERSIZED"]) == sorted(ids)
    assert src.read_bytes().count(b'{"sf-replay":') == 6


def test_replay_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--config with --to on a file source, a glob source, or a mongo source: one clear
    message, exit 2."""
    v1 = _config(tmp_path, "v1", "300B")
    err = _cli(capsys, "dlq", "replay", "--config", str(v1), "--to", "t", "--dry-run", code=2)
    assert "not Kafka; use --to-file" in err
    data = yaml.safe_load(v1.read_text())
    data["source"]["path"] = str(tmp_path / "*.jsonl")
    v1.write_text(yaml.safe_dump(data))
    assert "--to-file" in _cli(capsys, "dlq", "replay", "--config", str(v1), "--dry-run", code=2)
    data["source"] = {"type": "mongo", "uri": "mongodb://127.0.0.1:1", "database": "d", "collections": ["c"]}
    v1.write_text(yaml.safe_dump(data))
    assert "source.type" in _cli(capsys, "dlq", "replay", "--config", str(v1), "--dry-run", code=2)


def test_replay_line_round_trip() -> None:
    """Text and non-UTF-8 payloads come back byte for byte with their event id; other lines
    (data that merely looks similar) are left alone."""
    from dataflows.connectors.files.replay_lines import replay_line, unwrap_replay_line

    for payload in (b'{"a": 1}', b"\xff\xfe broken", b"line\nbreak", "€ \u2028".encode()):
        line = replay_line(payload, "kafka:t:0:7", "tag")
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert unwrap_replay_line(line[:-1]) == (payload, "kafka:t:0:7")
    assert unwrap_replay_line(b'{"sf-replay": "x"}') is None
    assert unwrap_replay_line(b'{"payload": "x", "sf-replay": "t", "sf-event-id": "e"}') is None


def test_replay_any_dlq_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--file DLQ --to-file PATH`: envelope lines a file source reads back with the ids."""
    from dataflows.connectors.dlq import JsonlDeadLetterAppender
    from dataflows.connectors.files import JsonlSource
    from dataflows.dead_letter import dead_letter
    from dataflows.events import RawRecord

    dlq, target = tmp_path / "dlq.jsonl", tmp_path / "retry.jsonl"
    JsonlDeadLetterAppender(dlq)([dead_letter(RawRecord(b"\xffbad", "mongo:db.c:tok1", "mongo:db.c"),
                                       code="SCHEMA", stage="c.parse", pipeline="c", message="x")])
    rep = _cli(capsys, "dlq", "replay", "--file", str(dlq), "--to-file", str(target), "--json", "--no-progress")
    assert rep["replayed"] == 1 and rep["by_topic"] == {str(target): 1}
    part = JsonlSource(str(target)).build_part("s", str(target), None)
    (rec,) = part.next_batch()
    assert (rec.payload, rec.event_id) == (b"\xffbad", "mongo:db.c:tok1")
