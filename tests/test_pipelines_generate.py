"""`streamforge generate`: deterministic sample data, and the bundled files match it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataflows.generate import generate_clicks, generate_orders
from streamforge_ops.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_generate_writes_deterministic_data_and_a_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "o.jsonl"
    assert main(["generate", "orders", "--out", str(out), "--count", "400", "--seed", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == 400 and sum(summary["lines_by_kind"].values()) == 400
    assert out.read_bytes() == b"".join(line + b"\n" for line in generate_orders(400, 3).lines)
    assert main(["generate", "sessions", "--out", str(out), "--count", "400", "--seed", "4"]) == 0
    assert "wrote 400 sessions lines" in capsys.readouterr().out
    assert out.read_bytes() == b"".join(line + b"\n" for line in generate_clicks(400, 4).lines)
    assert generate_clicks(400, 5).lines != generate_clicks(400, 4).lines


@pytest.mark.parametrize(
    "argv",
    [["generate", "orders", "--out", "x", "--count", "0"],
     ["generate", "orders", "--out", "/proc/no/such/dir/x.jsonl", "--count", "5"]],
)
def test_generate_rejects_bad_arguments_with_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "streamforge: error:" in capsys.readouterr().err


def test_generate_help_and_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["generate", "--help"])
    assert info.value.code == 0 and "--seed" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["generate", "payments", "--out", "x"])
    assert info.value.code == 2


@pytest.mark.parametrize(("name", "gen"), [("orders", generate_orders), ("clicks", generate_clicks)])
def test_bundled_sample_data_is_what_the_documented_command_makes(name: str, gen) -> None:
    """data/*.jsonl == `streamforge generate ... --count 5000 --seed 7` (dataflows/generate.py header)."""
    data = (REPO / "data" / f"{name}.jsonl").read_bytes()
    assert data == b"".join(line + b"\n" for line in gen(5000, 7).lines)
