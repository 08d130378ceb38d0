"""Alert and recording rules in deploy/prometheus: promtool-valid, unit-tested, documented.

`promtool` comes from the Debian package `prometheus` (installed by `.ci/run`).
Without it the promtool tests skip, unless CI or STREAMFORGE_REQUIRE_TOOLS is
set (tests/conftest.py REQUIRE_TOOLS): then they fail.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REQUIRE_TOOLS

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted(RULES.glob("*_rules.yaml"))
TEST_FILES = sorted((RULES / "tests").glob("*.yaml"))
# The seed's monitoring table (shared/seeds: fault tolerance §6) plus the two ages.
SEED_METRICS = (
    "streamforge_checkpoint_duration_ms",
    "streamforge_checkpoint_failure_count_total",
    "streamforge_source_latency_ms",
    "streamforge_dlq_event_count_total",
    "streamforge_restarts_total",
    "streamforge_last_checkpoint_timestamp_seconds",
    "streamforge_resume_token_age_seconds",
)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if REQUIRE_TOOLS:
            pytest.fail("promtool is required (CI/STREAMFORGE_REQUIRE_TOOLS set): apt-get install prometheus")
        pytest.skip("promtool not installed (Debian package prometheus)")
    return path


def _alerts() -> list[dict[str, Any]]:
    rules = yaml.safe_load((RULES / "alert_rules.yaml").read_text())
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_rule_files_pass_promtool_check(promtool: str) -> None:
    assert len(RULE_FILES) == 2
    out = _run([promtool, "check", "rules", *map(str, RULE_FILES)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    assert TEST_FILES, "no promtool unit tests in deploy/prometheus/tests"
    out = _run([promtool, "test", "rules", *map(str, TEST_FILES)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(TEST_FILES)


def test_promtool_unit_tests_catch_a_broken_threshold(promtool: str, tmp_path: Path) -> None:
    """The unit tests are not vacuous: raising a threshold makes them fail."""
    broken = (RULES / "alert_rules.yaml").read_text().replace("> 3600", "> 360000")
    (tmp_path / "alert_rules.yaml").write_text(broken)
    (tmp_path / "tests").mkdir()
    shutil.copy(RULES / "tests" / "alerts_test.yaml", tmp_path / "tests" / "alerts_test.yaml")
    out = _run([promtool, "test", "rules", str(tmp_path / "tests" / "alerts_test.yaml")])
    assert out.returncode != 0
    assert "StreamforgeResumeTokenStale" in out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - firing == set(), "alerts without a firing test"
    assert names - quiet == set(), "alerts without a not-firing test"


def test_every_recording_rule_has_a_unit_test() -> None:
    rules = yaml.safe_load((RULES / "recording_rules.yaml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"]}
    tested = {
        t["expr"].split("{")[0]
        for path in TEST_FILES
        for case in yaml.safe_load(path.read_text())["tests"]
        for t in case.get("promql_expr_test", [])
    }
    assert recorded - tested == set()


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_alert_is_documented_and_has_severity(alert: dict[str, Any]) -> None:
    ann = alert["annotations"]
    assert {"summary", "description", "runbook_url"} <= set(ann)
    assert ann["runbook_url"] == f"docs/operations.md#{alert['alert'].lower()}"
    assert alert["labels"]["severity"] in ("warning", "critical")
    assert alert["alert"].startswith("Streamforge")


def test_seed_monitoring_rows_all_have_alerts() -> None:
    exprs = " ".join(a["expr"] for a in _alerts())
    missing = [m for m in SEED_METRICS if m not in exprs]
    assert missing == []
