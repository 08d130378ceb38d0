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
