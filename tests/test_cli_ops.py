"""`--help` on every supervisor/state subcommand, and bad arguments exit 2 with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamforge_ops.cli import main

HELP = [
    ["run"],
    ["checkpoint"], ["checkpoint", "create"], ["checkpoint", "list"],
    ["savepoint"], ["savepoint", "create"], ["savepoint", "list"], ["savepoint", "describe"],
    ["savepoint", "restore"], ["savepoint", "delete"], ["savepoint", "prune"],
    ["restore"],
    ["state"], ["state", "inspect"], ["state", "compact"], ["state", "migrate"],
    ["upgrade"],
]


@pytest.mark.parametrize("argv", HELP, ids=" ".join)
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: streamforge " + " ".join(argv))
    assert "--config" in out or argv in (["checkpoint"], ["savepoint"], ["state"])


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        "pipeline: {name: p}\n"
        f"recovery: {{dir: {tmp_path}/rec}}\n"
        f"checkpoints: {{dir: file://{tmp_path}/store}}\n"
    )
    return path


BAD = [
    (["run"], "give a PIPELINE name or --config"),
    (["run", "--config", "{cfg}", "--workers", "0"], "--workers must be >= 1"),
    (["run", "--config", "{cfg}", "--restore", "yesterday"], "bad restore target"),
    (["run", "--config", "/nonexistent.yaml"], "does not exist"),
    (["run", "nosuchpipeline"], "no config for pipeline"),
    (["restore", "checkpoint", "--config", "{cfg}"], "needs an ID"),
    (["restore", "latest", "x", "--config", "{cfg}"], "takes no ID"),
    (["restore", "nothing", "--config", "{cfg}"], "bad restore target"),  # no longer an argparse choice
    (["restore", "checkpoint:", "--config", "{cfg}"], "bad restore target"),
    (["savepoint", "prune", "--config", "{cfg}"], "--max-age and/or --max-count"),
    (["savepoint", "prune", "--max-count", "0", "--config", "{cfg}"], "--max-count must be >= 1"),
    (["savepoint", "prune", "--max-age", "soon", "--config", "{cfg}"], "--max-age"),
    (["checkpoint", "create", "--config", "{cfg}"], "no recovery partitions"),
    (["state", "inspect", "--dir", "{tmp}/nothing"], "holds no recovery partitions"),
    (["upgrade", "--mode", "savepoint", "--config", "{cfg}", "--max-checkpoint-age", "old"],
     "--max-checkpoint-age"),
    (["upgrade", "--mode", "savepoint", "--config", "{cfg}"], "no recovery partitions"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_arguments_exit_2(
    argv: list[str], message: str, cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STREAMFORGE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main([a.format(cfg=cfg, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamforge: error: ") and message in err, err


@pytest.mark.parametrize("argv", [
    ["upgrade", "--mode", "bluegreen"], ["checkpoint", "frobnicate"], ["savepoint"],
    ["savepoint", "describe", "checkpoint:c1"], ["run", "--workers", "two"],
])
def test_argparse_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(("recovery", "checkpoints"), [
    ("backup-interval: 60s", "timeout: 120s"),   # the shipped defaults before issue 9
    ("backup-interval: 120s", "timeout: 120s"),  # equal is not above
    ("backup-interval: 0s", "timeout: 5s"),      # -b 0: nothing superseded is kept
])
@pytest.mark.parametrize("command", [["run"], ["checkpoint", "create"], ["savepoint", "list"]])
def test_backup_interval_not_above_checkpoint_timeout_is_refused(
    recovery: str, checkpoints: str, command: list[str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 9 item 1: a copy that takes longer than `recovery.backup-interval` can reach the
    consistent epoch and drop state (DESIGN §10), so every command that loads the pipeline
    settings refuses it at start, naming both keys, exit 2, no traceback."""
    monkeypatch.delenv("STREAMFORGE_CONFIG", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text(
        "pipeline: {name: p}\n"
        f"recovery: {{dir: {tmp_path}/rec, {recovery}}}\n"
        f"checkpoints: {{dir: file://{tmp_path}/store, {checkpoints}}}\n"
    )
    assert main([*command, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "recovery.backup-interval" in err and "checkpoints.timeout" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "rec").exists(), "refused before anything was started"


def test_shipped_configs_respect_backup_interval_above_timeout() -> None:
    """The configs in config/ load (their backup-interval is above their checkpoints.timeout)."""
    from dataflows.config import load_config
    from streamforge_ops.settings import read_settings

    for path in sorted((Path(__file__).resolve().parents[1] / "config").glob("*.yaml")):
        s = read_settings(load_config(path, environ={}))
        assert s.recovery.backup_interval_s > s.checkpoints.timeout_s, path
