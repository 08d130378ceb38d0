"""One CLI grammar: `--config` on every command that acts on a pipeline (the `dlq` commands
default their DLQ from it), one spelling of a snapshot target (`checkpoint:ID`,
`savepoint:ID`) everywhere, and a store or broker that cannot be reached is one line on
stderr with exit 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataflows.dead_letter import DeadLetter
from streamforge_ops.cli import main
from tests.fixtures.kafka import free_port


def _config(tmp_path: Path, **extra: str) -> Path:
    lines = [
        "pipeline: {name: orders, flow: 'dataflows.pipelines.orders:flow'}",
        f"checkpoints: {{dir: 'file://{tmp_path}/store'}}",
        f"recovery: {{dir: '{tmp_path}/rec'}}",
        f"dlq: {{type: file, path: '{tmp_path}/dlq.jsonl'}}",
        "source: {type: file, path: 'data/*.jsonl'}",  # a glob: no replay target, inspect needs none
        *[f"{k}: {v}" for k, v in extra.items()],
    ]
    path = tmp_path / "orders.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _letters(tmp_path: Path) -> None:
    letters = [DeadLetter("SCHEMA", "bad", "E", "orders.parse", "orders", b"{}", f"e{i}", "s") for i in range(3)]
    (tmp_path / "dlq.jsonl").write_text("".join(d.to_json() + "\n" for d in letters))


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors (usage + one error line, exit 2)
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err


def test_dlq_inspect_reads_the_pipelines_dlq_from_config(tmp_path: Path, capsys) -> None:
    _letters(tmp_path)
    code, out, err = _run(["dlq", "inspect", "--config", str(_config(tmp_path)), "--json"], capsys)
    assert code == 0, err
    assert '"total": 3' in out


def test_dlq_inspect_defaults_to_the_config_of_streamforge_config(tmp_path: Path, capsys, monkeypatch) -> None:
    _letters(tmp_path)
    monkeypatch.setenv("STREAMFORGE_CONFIG", str(_config(tmp_path)))
    code, out, err = _run(["dlq", "inspect", "--json", "--step", "orders.parse"], capsys)
    assert code == 0, err
    assert '"matched": 3' in out


def test_dlq_without_any_source_names_the_ways(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("STREAMFORGE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["dlq", "inspect"], capsys)
    _one_line_error(code, err)
    assert "--config" in err and "--file" in err and "--topic" in err


@pytest.mark.parametrize("action", [["inspect"], ["replay", "--dry-run", "--no-progress"]])
def test_an_unreachable_kafka_dlq_is_one_line_and_exit_2(action: list[str], capsys) -> None:
    argv = ["dlq", *action, "--brokers", f"127.0.0.1:{free_port()}", "--topic", "t", "--timeout", "1s"]
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err)
    assert "Kafka" in err


def test_checkpoint_list_with_an_unreachable_s3_endpoint_is_one_line_and_exit_2(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    cfg = _config(tmp_path)
    text = cfg.read_text().replace(
        f"checkpoints: {{dir: 'file://{tmp_path}/store'}}",
        f"checkpoints: {{dir: 's3://b/orders', endpoint-url: 'http://127.0.0.1:{free_port()}'}}",
    )
    cfg.write_text(text)
    for argv in (["checkpoint", "list"], ["savepoint", "list"]):
        code, _, err = _run([*argv, "--config", str(cfg)], capsys)
        _one_line_error(code, err)
        assert "store error" in err and "EndpointConnectionError" in err


@pytest.mark.parametrize("argv", [
    ["restore", "checkpoint:nope"],
    ["restore", "checkpoint", "nope"],  # the old spelling still works
    ["state", "inspect", "checkpoint:nope"],
    ["state", "inspect", "--checkpoint", "nope"],
])
def test_a_checkpoint_target_is_spelled_checkpoint_colon_id_everywhere(argv: list[str], tmp_path: Path, capsys) -> None:
    code, _, err = _run([*argv, "--config", str(_config(tmp_path))], capsys)
    assert code == 2 and "no complete checkpoint 'nope'" in err, err


@pytest.mark.parametrize("argv", [
    ["restore", "savepoint:nope"],
    ["savepoint", "describe", "savepoint:nope"],
    ["savepoint", "restore", "savepoint:nope"],
    ["state", "inspect", "savepoint:nope"],
])
def test_a_savepoint_target_is_spelled_savepoint_colon_id_everywhere(argv: list[str], tmp_path: Path, capsys) -> None:
    code, _, err = _run([*argv, "--config", str(_config(tmp_path))], capsys)
    assert code == 2 and "'nope'" in err and "invalid choice" not in err, err


@pytest.mark.parametrize("argv", [
    ["savepoint", "describe", "checkpoint:c1"],
    ["restore", "checkpoint:"],
    ["restore", "latest", "c1"],
    ["state", "inspect", "sideways:1"],
])
def test_a_wrong_target_is_refused_clearly(argv: list[str], tmp_path: Path, capsys) -> None:
    code, _, err = _run([*argv, "--config", str(_config(tmp_path))], capsys)
    _one_line_error(code, err)


def test_deploy_render_defaults_its_config_like_every_command(tmp_path: Path, capsys, monkeypatch) -> None:
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("STREAMFORGE_CONFIG", str(repo / "config" / "orders.yaml"))
    code, out, err = _run(["deploy", "render", "--output", str(tmp_path / "k8s"), "--json"], capsys)
    assert code == 0, err
    assert '"pipeline": "orders"' in out
    monkeypatch.delenv("STREAMFORGE_CONFIG")
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["deploy", "render", "--output", str(tmp_path / "k8s")], capsys)
    _one_line_error(code, err)
    assert "--config FILE or set STREAMFORGE_CONFIG" in err
