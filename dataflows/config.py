"""Pipeline configuration: a YAML file plus environment overrides.

Keys are dotted paths that mirror the seed's Flink keys
(`execution.checkpointing.interval` -> `checkpoints.interval`). Any key can be
overridden by an environment variable `STREAMFORGE__SECTION__KEY` (double
underscores separate levels, case-insensitive, `_` stands for `-`), e.g.
`STREAMFORGE__CHECKPOINTS__MIN_PAUSE=10s`. Values from the environment are
parsed as YAML scalars.

Typed getters raise `ConfigError` naming the key, so bad configuration fails
at start with a message a user can act on.
"""

from __future__ import annotations

import builtins
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Config", "ConfigError", "load_config", "parse_duration", "parse_size", "resolve_config_path"]

log = logging.getLogger(__name__)

ENV_PREFIX = "STREAMFORGE__"
_MISSING = object()


class ConfigError(ValueError):
    """Configuration that cannot be used; the message names the key."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.I)
_SIZE_UNITS = {
    None: 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30
}


def parse_duration(value: Any) -> float:
    """`"60s"`, `"2m"`, `"500ms"`, `"1h"` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '60s', got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"expected a duration like '60s', '2m' or '500ms', got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(value: Any) -> int:
    """`"1MiB"`, `"512kb"` or a number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"expected a size like '1MiB' or a number of bytes, got {value!r}")
    unit = m.group(2).lower() if m.group(2) else None
    return int(m.group(1)) * _SIZE_UNITS[unit]


@dataclass
class Config:
    """A nested mapping with typed, key-naming getters."""

    data: dict[str, Any] = field(default_factory=dict)
    origin: builtins.str = "<defaults>"
    prefix: builtins.str = ""
    # the whole config a section was taken from (None: this is the whole config)
    root: dict[builtins.str, Any] | None = field(default=None, compare=False, repr=False)

    def full_key(self, key: builtins.str) -> builtins.str:
        """The key as a user writes it (`source.type`, not `type`, in a section)."""
        return self.prefix + key

    def raw(self, key: builtins.str, default: Any = _MISSING) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                if default is _MISSING:
                    raise ConfigError(f"{self.full_key(key)}: required key is missing (in {self.origin})")
                return default
            node = node[part]
        return node

    def has(self, key: builtins.str) -> builtins.bool:
        return self.raw(key, None) is not None

    def _typed(self, key: builtins.str, default: Any, conv: Any, what: builtins.str) -> Any:
        value = self.raw(key, default)
        if value is None:
            return None
        try:
            return conv(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.full_key(key)}: {what}: {exc} (in {self.origin})") from None

    def str(self, key: builtins.str, default: Any = _MISSING) -> builtins.str:
        return self._typed(key, default, _as_str, "expected a string")

    def int(self, key: builtins.str, default: Any = _MISSING, *, minimum: builtins.int | None = None) -> builtins.int:
        value = self._typed(key, default, _as_int, "expected an integer")
        if minimum is not None and value is not None and value < minimum:
            raise ConfigError(
                f"{self.full_key(key)}: must be >= {minimum}, got {value} (in {self.origin})"
            )
        return value

    def float(self, key: builtins.str, default: Any = _MISSING) -> builtins.float:
        return self._typed(key, default, float, "expected a number")

    def bool(self, key: builtins.str, default: Any = _MISSING) -> builtins.bool:
        return self._typed(key, default, _as_bool, "expected true or false")

    def duration(self, key: builtins.str, default: Any = _MISSING) -> builtins.float:
        """Seconds."""
        return self._typed(key, default, parse_duration, "bad duration")

    def size(self, key: builtins.str, default: Any = _MISSING) -> builtins.int:
        """Bytes."""
        return self._typed(key, default, parse_size, "bad size")

    def choice(self, key: builtins.str, choices: tuple[builtins.str, ...], default: Any = _MISSING) -> builtins.str:
        value = self.str(key, default)
        if value not in choices:
            raise ConfigError(
                f"{self.full_key(key)}: must be one of {', '.join(choices)}, got {value!r} (in {self.origin})"
            )
        return value

    def section(self, key: builtins.str) -> Config:
        value = self.raw(key, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.full_key(key)}: expected a mapping (in {self.origin})")
        return Config(dict(value), self.origin, f"{self.full_key(key)}.", self.top_data())

    def renamed(self, renames: Mapping[builtins.str, builtins.str]) -> Config:
        """This config with each old key of `renames` (old: a key of this section -> new: a
        dotted key) moved to its new key: a deprecation warning naming both; both spellings
        set is a ConfigError."""
        data = _deep_copy(self.data)
        for old, new in renames.items():
            if self.raw(old, None) is None:
                continue
            if self.raw(new, None) is not None:
                raise ConfigError(f"{self.full_key(old)} and {self.full_key(new)}: both set; "
                                  f"{self.full_key(old)} is the deprecated spelling, keep only "
                                  f"{self.full_key(new)} (in {self.origin})")
            log.warning("%s is deprecated: use %s (in %s)", self.full_key(old), self.full_key(new), self.origin)
            node = data
            *parents, leaf = new.split(".")
            for part in parents:
                child = node.get(part)
                node = node.setdefault(part, {}) if not isinstance(child, dict) else child
            node[leaf] = data.pop(old)
        return replace(self, data=data)

    def top_data(self) -> dict[builtins.str, Any]:
        """The data of the whole config this one is a section of."""
        return self.data if self.root is None else self.root

    def top_section(self, key: builtins.str) -> Config:
        """A section of the whole config, from any section of it (a sink reads `dlq`)."""
        return Config(self.top_data(), self.origin).section(key)


def _as_str(v: Any) -> str:
    if isinstance(v, (dict, list)):
        raise TypeError(f"got {type(v).__name__}")
    return str(v)


def _as_int(v: Any) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise TypeError(f"got {v!r}")
    return int(v)


def _as_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if str(v).lower() in ("true", "yes", "1", "on"):
        return True
    if str(v).lower() in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"got {v!r}")


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, text in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        node = data
        for i, part in enumerate(parts):
            # An existing key matches whatever its spelling; a new one takes the
            # house style (`min_pause` -> `min-pause`).
            match = next(
                (k for k in node if k.lower().replace("-", "_") == part), part.replace("_", "-")
            )
            if i == len(parts) - 1:
                node[match] = yaml.safe_load(text) if text != "" else ""
            else:
                child = node.get(match)
                if not isinstance(child, dict):
                    child = node[match] = {}
                node = child


REPO_CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def resolve_config_path(
    explicit: str | os.PathLike[str] | None,
    pipeline: str | None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """The config file of a pipeline, the one order every entry point uses (the CLI's
    `--config`, a flow run directly): `explicit` (`--config`), else `$STREAMFORGE_CONFIG`,
    else `config/<pipeline>.yaml` (in the working directory, then in this repository).

    ConfigError when none is given or the file does not exist. Whoever knows which
    pipeline it wants checks that the file configures it (`pipeline.name` / `pipeline.flow`).
    """
    env = os.environ if environ is None else environ
    if explicit:
        path = Path(explicit)
    elif env.get("STREAMFORGE_CONFIG"):
        path = Path(env["STREAMFORGE_CONFIG"])
    elif pipeline:
        candidates = [Path("config") / f"{pipeline}.yaml", REPO_CONFIG_DIR / f"{pipeline}.yaml"]
        path = next((p for p in candidates if p.is_file()), candidates[0])
        if not path.is_file():
            raise ConfigError(f"no config for pipeline {pipeline!r}: config/{pipeline}.yaml not found; "
                              f"pass --config FILE or set STREAMFORGE_CONFIG")
    else:
        raise ConfigError("no pipeline config: pass --config FILE or set STREAMFORGE_CONFIG")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    return path


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Config:
    """Load YAML from `path` (or `$STREAMFORGE_CONFIG`), then apply env overrides."""
    env = os.environ if environ is None else environ
    path = path or env.get("STREAMFORGE_CONFIG")
    data: dict[str, Any] = _deep_copy(dict(defaults or {}))
    origin = "<defaults>"
    if path:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: top level must be a mapping")
        _merge(data, loaded)
        origin = str(p)
    _apply_env(data, env)
    return Config(data, origin)


def _merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = _deep_copy(v) if isinstance(v, dict) else v


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    return d
