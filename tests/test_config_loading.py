"""dataflows/config.py: YAML + STREAMFORGE__A__B overrides, typed getters naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataflows.config import Config, ConfigError, load_config, parse_duration, parse_size

YAML = """
pipeline:
  name: orders
  workers: 1
limits:
  max-record-bytes: 1MiB
patterns:
  dedup:
    ttl: 1h
checkpoints:
  interval: 60s
"""


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    p = tmp_path / "orders.yaml"
    p.write_text(YAML)
    return p


def test_env_overrides_nested_keys_with_dashes_and_typed_values(cfg_file: Path) -> None:
    env = {
        "STREAMFORGE__PATTERNS__DEDUP__TTL": "2h",
        "STREAMFORGE__LIMITS__MAX_RECORD_BYTES": "4KiB",
        "streamforge__pipeline__workers": "3",
        "STREAMFORGE__SOURCE__TAIL": "true",
        "OTHER__PIPELINE__NAME": "ignored",
    }
    cfg = load_config(cfg_file, environ=env)
    assert cfg.duration("patterns.dedup.ttl") == 7200.0
    assert cfg.size("limits.max-record-bytes") == 4096
    assert cfg.int("pipeline.workers") == 3
    assert cfg.bool("source.tail") is True
    assert cfg.str("pipeline.name") == "orders"
    assert cfg.raw("limits") == {"max-record-bytes": "4KiB"}  # overrode the existing dashed key


def test_config_path_comes_from_streamforge_config(cfg_file: Path) -> None:
    cfg = load_config(None, environ={"STREAMFORGE_CONFIG": str(cfg_file)})
    assert cfg.origin == str(cfg_file) and cfg.str("pipeline.name") == "orders"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(cfg_file.with_name("nope.yaml"), environ={})


@pytest.mark.parametrize(
    ("key", "getter", "message"),
    [
        ("patterns.dedup.ttl", "duration", "patterns.dedup.ttl: bad duration"),
        ("limits.max-record-bytes", "size", "limits.max-record-bytes: bad size"),
        ("pipeline.workers", "int", "pipeline.workers: expected an integer"),
        ("source.tail", "bool", "source.tail: expected true or false"),
    ],
)
def test_bad_values_raise_config_errors_naming_the_key(
    cfg_file: Path, key: str, getter: str, message: str
) -> None:
    env_name = "STREAMFORGE__" + key.upper().replace(".", "__").replace("-", "_")
    cfg = load_config(cfg_file, environ={env_name: "soon"})
    with pytest.raises(ConfigError) as info:
        getattr(cfg, getter)(key)
    assert str(info.value).startswith(message) and str(cfg_file) in str(info.value)


def test_missing_keys_defaults_choices_and_minimums() -> None:
    cfg = Config({"a": {"b": 0, "kind": "x"}}, "t.yaml")
    assert cfg.str("a.missing", "d") == "d" and cfg.str("a.missing", None) is None
    with pytest.raises(ConfigError, match=r"^a\.c: required key is missing"):
        cfg.raw("a.c")
    with pytest.raises(ConfigError, match=r"^a\.b: must be >= 1"):
        cfg.int("a.b", minimum=1)
    with pytest.raises(ConfigError, match=r"^a\.kind: must be one of file, kafka"):
        cfg.choice("a.kind", ("file", "kafka"))
    with pytest.raises(ConfigError, match=r"^a\.b: expected a mapping"):
        cfg.section("a.b")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("60s", 60.0), ("2m", 120.0), ("1.5h", 5400.0), ("7d", 604800.0), (30, 30.0)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "ten seconds", "5 weeks", True, "-1s"])
def test_parse_duration_rejects_garbage(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_parse_size() -> None:
    assert parse_size("1MiB") == 2**20 and parse_size("16KiB") == 16384
    assert parse_size("512kb") == 512_000 and parse_size(10) == 10
    with pytest.raises(ValueError):
        parse_size("1.5MiB")


def test_repo_pipeline_configs_load_and_mirror_the_conventions() -> None:
    root = Path(__file__).resolve().parents[1] / "config"
    for name in ("orders", "sessions"):
        cfg = load_config(root / f"{name}.yaml", environ={})
        assert cfg.str("pipeline.name") == name
        assert cfg.str("pipeline.flow") == f"dataflows.pipelines.{name}:flow"
        assert cfg.choice("source.type", ("file", "kafka", "mongo")) == "file"
        assert cfg.size("limits.max-record-bytes") < 20_000  # the generator's oversized records
        assert cfg.duration("recovery.snapshot-interval") > 0


def _orders_config(path: Path, name: str = "orders") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"pipeline: {{name: {name}, flow: 'dataflows.pipelines.{name}:flow'}}\n")
    return path


def test_the_cli_and_the_flows_resolve_the_config_in_one_order(tmp_path: Path, monkeypatch) -> None:
    """One resolver: --config, then $STREAMFORGE_CONFIG, then config/<pipeline>.yaml, for the
    CLI (`streamforge_ops.job`) and a flow run directly (`pipelines.common.pipeline_config`)."""
    from dataflows.pipelines.common import pipeline_config
    from streamforge_ops.job import load_job

    monkeypatch.chdir(tmp_path)
    _orders_config(tmp_path / "config" / "orders.yaml")
    chosen = _orders_config(tmp_path / "elsewhere" / "orders.yaml")
    monkeypatch.setenv("STREAMFORGE_CONFIG", str(chosen))
    assert load_job(None, pipeline="orders").config_path == chosen.absolute()
    assert Path(pipeline_config("orders").origin).absolute() == chosen.absolute()
    monkeypatch.delenv("STREAMFORGE_CONFIG")
    assert load_job(None, pipeline="orders").config_path == (tmp_path / "config" / "orders.yaml").absolute()
    assert Path(pipeline_config("orders").origin).absolute() == (tmp_path / "config" / "orders.yaml").absolute()


def test_an_env_config_of_another_pipeline_is_refused_naming_both(tmp_path: Path, monkeypatch) -> None:
    from streamforge_ops.cli import CliError
    from streamforge_ops.job import load_job

    monkeypatch.setenv("STREAMFORGE_CONFIG", str(_orders_config(tmp_path / "s.yaml", "sessions")))
    with pytest.raises(CliError, match=r"configures pipeline 'sessions', not 'orders'"):
        load_job(None, pipeline="orders")


def test_resolve_config_path_without_anything_names_the_ways() -> None:
    from dataflows.config import resolve_config_path

    with pytest.raises(ConfigError, match=r"--config FILE or set STREAMFORGE_CONFIG"):
        resolve_config_path(None, None, environ={})
