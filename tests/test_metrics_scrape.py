"""Dataflow metrics served by Bytewax's own HTTP server.

A flow run with plain `python -m bytewax.run` and `BYTEWAX_DATAFLOW_API_ENABLED`
serves Bytewax's metrics plus the Python registry (dataflows/metrics.py) at
`/metrics`. This runs the orders pipeline on a tailed file, scrapes it over
HTTP while it runs, and checks that `streamforge_dlq_event_count_total` moves
when bad lines arrive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.kafka import free_port

ROOT = Path(__file__).resolve().parents[1]


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _dlq_total(samples: dict, code: str) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "streamforge_dlq_event_count_total" and ("error_code", code) in labels
    )


def _wait_for(cond: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dataflow exited early ({proc.returncode}) waiting for {what}"
        try:
            if cond():
                return
        except OSError:
            pass  # server not up yet
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_bytewax_api_serves_streamforge_metrics_that_move(tmp_path: Path) -> None:
    data = tmp_path / "orders.jsonl"
    good = {"event_id": "e1", "order_id": "o1", "ts": 1_700_000_000_000, "op": "insert", "amount": 3}
    data.write_text(json.dumps(good) + "\n{not json\n")
    cfg = yaml.safe_load((ROOT / "config/orders.yaml").read_text())
    cfg["source"] = {"type": "file", "path": str(data), "tail": True, "poll-interval": "50ms"}
    cfg["sink"] = {"type": "file", "path": str(tmp_path / "table.jsonl")}
    cfg["dlq"] = {"type": "file", "path": str(tmp_path / "dlq.jsonl")}
    (tmp_path / "orders.yaml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    env = {
        **os.environ,
        "STREAMFORGE_CONFIG": str(tmp_path / "orders.yaml"),
        "BYTEWAX_DATAFLOW_API_ENABLED": "true",
        "BYTEWAX_DATAFLOW_API_PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.pipelines.orders:flow", "-s", "1"],
        cwd=tmp_path,  # Bytewax's API writes dataflow.json into the working directory
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: _dlq_total(_scrape(port), "MALFORMED_JSON") == 1, proc, "first dead letter")
        with data.open("a") as f:
            missing_key = {k: v for k, v in good.items() if k != "order_id"}
            f.write("{still not json\n" + json.dumps({**missing_key, "event_id": "e2"}) + "\n")

        def moved() -> bool:
            s = _scrape(port)
            return _dlq_total(s, "MALFORMED_JSON") == 2 and _dlq_total(s, "MISSING_KEY") == 1

        _wait_for(moved, proc, "the appended dead letters")
        samples = _scrape(port)
        # Bytewax's own metrics are on the same page.
        assert any(name.startswith("item_inp_count") or "bytewax" in name for name, _ in samples)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
