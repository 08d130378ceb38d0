"""kill -9 of a real `python -m bytewax.run` orders job mid-stream, then resume.

The file source resumes from its snapshot offset, the JSONL sinks truncate to
theirs: the resumed run's outputs must equal the reference (no lost or
duplicated table changes, diffs or dead letters), even though the kill may
land in the middle of a write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bytewax.recovery import init_db_dir

from dataflows.config import load_config
from dataflows.connectors.files import read_jsonl
from tests.test_pipelines_orders import REPO, outputs, reference, setup


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _run(cfg_path: Path, recovery: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "STREAMFORGE_CONFIG": str(cfg_path),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.pipelines.orders:flow",
         "-r", str(recovery), "-s", "1", "-b", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def test_kill_9_and_resume_is_exactly_once(tmp_path: Path) -> None:
    cfg, gen = setup(tmp_path, count=20_000, seed=13)
    cfg_path = tmp_path / "orders.yaml"
    cfg_path.write_text(json.dumps(cfg.data))  # JSON is YAML
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 2)
    table = Path(cfg.str("sink.path"))

    proc = _run(cfg_path, recovery)
    deadline = time.monotonic() + 60
    first_output: float | None = None
    while proc.poll() is None:
        n = _lines(table)
        if n and first_output is None:
            first_output = time.monotonic()
        # mid-stream, preferably past a snapshot (1 s epochs); never near the end
        if n >= 10_000 or (n >= 1_500 and first_output and time.monotonic() - first_output > 1.5):
            break
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.05)
    assert proc.poll() is None, f"finished before the kill: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    killed_at = _lines(table)

    resumed = _run(cfg_path, recovery)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err.decode()[-2000:]

    got_table, got_letters, got_kinds = outputs(load_config(cfg_path, environ={}))
    want_table, want_letters, want_kinds = reference(gen)
    assert 0 < killed_at < sum(want_kinds.values())
    assert got_table == want_table
    assert got_letters == want_letters
    assert got_kinds == want_kinds  # every diff exactly once
    assert Counter(d["event_id"] for d in read_jsonl(table)).most_common(1)[0][1] == 1
