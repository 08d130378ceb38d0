"""Helpers for the supervisor / CLI / upgrade tests: configs, processes, polling.

A `Workspace` is one temporary job: input file, config YAML, recovery dir and
file:// store, all under one directory. `Workspace.start()` runs
`python -m streamforge_ops run --config ...` as a real process (output to files,
never a pipe that could fill up); tests poll its status file, its HTTP
endpoints and its output with deadlines instead of sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]


STARTED: list[subprocess.Popen[bytes]] = []  # every process a Workspace started


def kill_leftovers() -> None:
    """SIGKILL every started supervisor still running (a test that failed before stopping
    it); its child dies with it (parent-death signal). Called after each test (conftest)."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(cond: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `cond` every 50 ms until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def write_input(path: Path, n: int, *, start: int = 0, users: int = 7) -> None:
    with path.open("a") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"id": i, "user": f"u{i % users}", "amount": i}) + "\n")


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def assert_exactly_once(rows: list[dict[str, Any]], n: int) -> None:
    """Every input id once, and per user the running count/total are exact."""
    ids = sorted(r["id"] for r in rows)
    assert ids == list(range(n)), f"lost {sorted(set(range(n)) - set(ids))[:10]}, dup {len(ids) - len(set(ids))}"
    per_user: dict[str, tuple[int, int]] = {}
    for r in sorted(rows, key=lambda r: r["id"]):
        count, total = per_user.get(r["user"], (0, 0))
        count, total = count + 1, total + r["amount"]
        assert (r["count"], r["total"]) == (count, total), f"state wrong at {r}"
        per_user[r["user"]] = (count, total)


@dataclass
class Workspace:
    root: Path
    n: int = 200
    flow: str = "tests.supervised_flow:flow"
    overrides: dict[str, Any] = field(default_factory=dict)
    runs: int = 0

    def __post_init__(self) -> None:
        self.input = self.root / "in.jsonl"
        self.output = self.root / "out.jsonl"
        self.recovery = self.root / "recovery"
        self.store_url = f"file://{self.root / 'store'}"
        if not self.input.exists():
            write_input(self.input, self.n)

    def config(self, name: str = "config.yaml", **overrides: Any) -> Path:
        data: dict[str, Any] = {
            "pipeline": {"name": "sup", "flow": self.flow, "workers": 1, "code-version": "1"},
            "source": {"type": "file", "path": str(self.input), "tail": False, "delay": 0.02, "batch-size": 5},
            "sink": {"type": "file", "path": str(self.output)},
            "recovery": {"dir": str(self.recovery), "partitions": 4, "snapshot-interval": "1s",
                         "backup-interval": "40s", "compact-interval": "1s", "restart-backoff": "0.2s",
                         "stop-grace": "10s"},
            "checkpoints": {"dir": self.store_url, "interval": "1s", "timeout": "30s",
                            "min-pause": "0s", "retained": 3, "incremental": True},
            "savepoints": {"dir": self.store_url, "on-cancel": True},
            "metrics": {"port": 0, "host": "127.0.0.1"},
        }
        for section, values in {**self.overrides, **overrides}.items():
            data.setdefault(section, {}).update(values)
        path = self.root / name
        path.write_text(yaml.safe_dump(data))
        return path

    def start(self, *args: str, config: Path | None = None, command: str = "run",
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Run `streamforge <command> --config ... ARGS` in the background."""
        self.runs += 1
        cfg = config or self.config()
        log = (self.root / f"run{self.runs}.out").open("wb")
        err = (self.root / f"run{self.runs}.err").open("wb")
        proc_env = {**os.environ, "PYTHONPATH": str(REPO), "SF_TEST_TAG": str(self.runs), **(env or {})}
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamforge_ops", *command.split(), "--config", str(cfg), *args],
            cwd=REPO, stdout=log, stderr=err, env=proc_env,
        )
        proc.out_path, proc.err_path = log.name, err.name  # type: ignore[attr-defined]
        STARTED.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> tuple[int, str, str]:
        """Wait for exit; (code, stdout, stderr)."""
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"supervisor did not exit; stderr:\n{self.stderr(proc)}") from None
        return code, Path(proc.out_path).read_text(), self.stderr(proc)  # type: ignore[attr-defined]

    def stderr(self, proc: subprocess.Popen[bytes]) -> str:
        return Path(proc.err_path).read_text()  # type: ignore[attr-defined]

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.root / "supervisor.json").read_text()))
        except (OSError, ValueError):
            return {}

    def running(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the supervisor runs a child; its status."""
        def ready() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise AssertionError(f"supervisor exited {proc.returncode}:\n{self.stderr(proc)}")
            st = self.status()
            return st if st.get("child_pid") and st.get("pid") == proc.pid and st.get("port") else None
        return wait_for(ready, timeout=timeout, what="the supervisor to start its child")

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        proc.send_signal(sig)
        return self.finish(proc)


def cli(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> Any:
    """Run `streamforge ARGV --json` in this process, expecting exit `code`: its parsed stdout,
    or its stderr text when it printed nothing on stdout (an error)."""
    from streamforge_ops.cli import main

    rc = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert rc == code, (rc, out, err)
    return json.loads(out) if out.strip() else err


def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return 0, ""  # not answering right now: callers poll again


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed with prometheus_client's parser: {(sample name, labels): value}."""
    _, text = http_get(port, "/metrics")
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = tuple(sorted(labels.items()))
    return sum(v for (n, lab), v in metrics.items() if n == name and set(want) <= set(lab))
