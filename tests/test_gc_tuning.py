"""A pipeline process sets its garbage collector in one place (`dataflows.gc_tuning.tune_gc`,
called by `lazy_flow` once the module-level `flow` is built): what `python -m bytewax.run
dataflows.pipelines.<name>:flow`, `streamforge run`'s child and a cluster process all load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataflows.gc_tuning import GC_THRESHOLD

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["orders", "sessions"])
def test_loading_a_pipelines_flow_freezes_and_raises_the_young_threshold(name: str) -> None:
    code = (f"import gc, json, importlib; m = importlib.import_module('dataflows.pipelines.{name}'); "
            "before = gc.get_threshold(); m.flow; "
            "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))")
    env = {**os.environ, "STREAMFORGE_CONFIG": str(REPO / "config" / f"{name}.yaml")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    before, after, frozen = json.loads(out.stdout.strip().splitlines()[-1])
    assert tuple(before) == (700, 10, 10)  # importing a pipeline module alone changes nothing
    assert tuple(after) == GC_THRESHOLD
    assert frozen > 10_000  # the modules and the flow: no later collection scans them
