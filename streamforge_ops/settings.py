"""Typed view of the operational config sections, with defaults.

The sections mirror the Flink seed's keys: `checkpoints.*` is
`execution.checkpointing.*` + `state.checkpoints.dir`, `savepoints.*` is
`state.savepoints.dir` + `kubernetes.operator.job.cancel.mode`. Every value is
read through `dataflows.config.Config`'s typed getters, so a bad value fails at
start with a message naming the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from dataflows.config import Config, ConfigError
from dataflows.retry import RetryPolicy, retry_policy_from_config
from recovery.restore import STORE_RETRY

__all__ = [
    "CheckpointSettings",
    "MetricsSettings",
    "RecoverySettings",
    "SavepointSettings",
    "SecuritySettings",
    "Settings",
    "StoreSettings",
    "SIGNING_KEY_PLACEHOLDER",
    "read_settings",
]

RETENTION_MODES = ("RETAIN_ON_CANCELLATION", "DELETE_ON_CANCELLATION")


@dataclass(frozen=True)
class StoreSettings:
    """Where an object store lives: `file://path` or `s3://bucket/prefix`."""

    url: str
    endpoint_url: str | None = None
    region: str | None = None
    sse: str | None = None


@dataclass(frozen=True)
class RecoverySettings:
    """Bytewax recovery partitions and the supervisor's restart policy."""

    dir: Path
    partitions: int = 4
    snapshot_interval_s: float = 2.0
    backup_interval_s: float = 240.0  # must be above checkpoints.timeout (checked at start)
    compact_interval_s: float = 300.0
    restart_initial_backoff_s: float = 1.0
    restart_max_backoff_s: float = 60.0
    restart_multiplier: float = 2.0
    max_restarts: int = 0  # 0 = unlimited; counted over restart_window_s
    restart_window_s: float = 600.0  # FKO's restarts threshold / window
    crash_loop_restarts: int = 3  # restarts within crash_loop_window_s that mark /healthz unhealthy
    crash_loop_window_s: float = 300.0
    stop_grace_s: float = 20.0


@dataclass(frozen=True)
class CheckpointSettings:
    """`execution.checkpointing.*`."""

    store: StoreSettings
    interval_s: float = 60.0
    timeout_s: float = 120.0
    min_pause_s: float = 30.0
    retained: int = 3
    incremental: bool = True
    full_every: int = 10
    externalized_retention: str = "RETAIN_ON_CANCELLATION"
    # checkpoints.retry.*: how a restore retries reads of the store before it fails
    restore_retry: RetryPolicy = field(default_factory=lambda: STORE_RETRY)


@dataclass(frozen=True)
class SavepointSettings:
    """`state.savepoints.dir` and the cancel-with-savepoint switch."""

    store: StoreSettings
    on_cancel: bool = True
    max_age_s: float | None = 7 * 86400.0
    max_count: int | None = 10
    allow_non_restored_state: bool = False  # Flink's execution.savepoint.ignore-unclaimed-state
    timeout_s: float = 120.0  # the stop (SIGTERM / preStop) savepoint gives up after this


# What `deploy render` puts in the signing Secret template; refused as a key.
SIGNING_KEY_PLACEHOLDER = "REPLACE-ME-with-a-random-key"


@dataclass(frozen=True)
class SecuritySettings:
    """HMAC signing of manifests: the key is read from an environment variable."""

    signing_key_env: str = "STREAMFORGE_SIGNING_KEY"
    allow_unsigned: bool = False  # security.allow-unsigned: with a key, restore unsigned snapshots
    require_signing_key: bool = False  # security.require-signing-key: no key -> refuse to start

    def signing_key(self) -> bytes | None:
        """The key from `signing_key_env`; ConfigError if it is the rendered placeholder or
        missing while `security.require-signing-key` is on."""
        value = os.environ.get(self.signing_key_env)
        if value == SIGNING_KEY_PLACEHOLDER:
            raise ConfigError(
                f"security.signing-key-env: ${self.signing_key_env} holds the placeholder of the "
                "rendered Secret template, not a key: put a random key in the Secret (e.g. "
                "`openssl rand -hex 32`)"
            )
        if not value and self.require_signing_key:
            raise ConfigError(
                f"security.require-signing-key is on but ${self.signing_key_env} "
                "(security.signing-key-env) is not set: snapshots cannot be signed or verified"
            )
        return value.encode() if value else None


@dataclass(frozen=True)
class MetricsSettings:
    """The supervisor's HTTP server (`/metrics`, `/healthz`, `/readyz`)."""

    port: int = 9464
    host: str = "0.0.0.0"
    unhealthy_after_intervals: float = 3.0  # /healthz fails when the last checkpoint is older


@dataclass(frozen=True)
class Settings:
    """Everything the supervisor and the state tools need from a pipeline config."""

    pipeline: str
    flow: str
    workers: int
    code_version: str
    recovery: RecoverySettings
    checkpoints: CheckpointSettings
    savepoints: SavepointSettings
    security: SecuritySettings
    metrics: MetricsSettings

    def with_store(self, url: str) -> Settings:
        """The same settings with both checkpoints and savepoints in `url`."""
        return replace(
            self,
            checkpoints=replace(self.checkpoints, store=replace(self.checkpoints.store, url=url)),
            savepoints=replace(self.savepoints, store=replace(self.savepoints.store, url=url)),
        )


def _store(section: Config, default: StoreSettings) -> StoreSettings:
    return StoreSettings(
        url=section.str("dir", default.url),
        endpoint_url=section.str("endpoint-url", default.endpoint_url),
        region=section.str("region", default.region),
        sse=section.str("sse", default.sse),
    )


def _positive(value: float, key: str) -> float:
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")
    return value


def _check_backup_interval(recovery: RecoverySettings, checkpoints: CheckpointSettings) -> None:
    """A checkpoint copy may take up to `checkpoints.timeout`; Bytewax keeps superseded
    snapshots for `recovery.backup-interval` (`-b`). A copy that outlives them reaches the
    consistent epoch and is refused (or, unchecked, drops state: DESIGN §10)."""
    if recovery.backup_interval_s <= checkpoints.timeout_s:
        raise ConfigError(
            f"recovery.backup-interval ({recovery.backup_interval_s:g}s) must be above "
            f"checkpoints.timeout ({checkpoints.timeout_s:g}s): Bytewax must keep superseded "
            "snapshots longer than a checkpoint copy may take; raise recovery.backup-interval "
            "or lower checkpoints.timeout"
        )


# the one spelling of a backoff block (dataflows.retry): the old keys still work, with a warning
RENAMED_RECOVERY_KEYS = {
    "restart-backoff": "restart.initial-backoff",
    "max-restart-backoff": "restart.max-backoff",
    "restart-multiplier": "restart.multiplier",
}


def read_settings(cfg: Config) -> Settings:
    """Read the pipeline/recovery/checkpoints/savepoints/security/metrics sections."""
    name = cfg.str("pipeline.name")
    rec, ck, sp = cfg.section("recovery").renamed(RENAMED_RECOVERY_KEYS), cfg.section("checkpoints"), cfg.section("savepoints")
    sec, met = cfg.section("security"), cfg.section("metrics")
    ck_store = _store(ck, StoreSettings(f"file://.streamforge/{name}/store"))
    recovery = RecoverySettings(
        dir=Path(rec.str("dir", f".streamforge/{name}/recovery")),
        partitions=rec.int("partitions", 4, minimum=1),
        snapshot_interval_s=_positive(rec.duration("snapshot-interval", "2s"), "recovery.snapshot-interval"),
        backup_interval_s=rec.duration("backup-interval", "240s"),
        compact_interval_s=rec.duration("compact-interval", "5m"),
        restart_initial_backoff_s=rec.duration("restart.initial-backoff", "1s"),
        restart_max_backoff_s=rec.duration("restart.max-backoff", "60s"),
        restart_multiplier=rec.float("restart.multiplier", 2.0),
        max_restarts=rec.int("max-restarts", 0, minimum=0),
        restart_window_s=_positive(rec.duration("restart-window", "10m"), "recovery.restart-window"),
        crash_loop_restarts=rec.int("crash-loop-restarts", 3, minimum=1),
        crash_loop_window_s=rec.duration("crash-loop-window", "5m"),
        stop_grace_s=rec.duration("stop-grace", "20s"),
    )
    checkpoints = CheckpointSettings(
        store=ck_store,
        interval_s=_positive(ck.duration("interval", "60s"), "checkpoints.interval"),
        timeout_s=_positive(ck.duration("timeout", "120s"), "checkpoints.timeout"),
        min_pause_s=ck.duration("min-pause", "30s"),
        retained=ck.int("retained", 3, minimum=1),
        incremental=ck.bool("incremental", True),
        full_every=ck.int("full-every", 10, minimum=1),
        externalized_retention=ck.choice(
            "externalized-retention", RETENTION_MODES, "RETAIN_ON_CANCELLATION"
        ),
        restore_retry=retry_policy_from_config(ck, STORE_RETRY),
    )
    savepoints = SavepointSettings(
        store=_store(sp, ck_store),
        on_cancel=sp.bool("on-cancel", True),
        max_age_s=sp.duration("max-age", "7d"),
        max_count=sp.int("max-count", 10, minimum=1),
        allow_non_restored_state=sp.bool("allow-non-restored-state", False),
        timeout_s=_positive(sp.duration("timeout", f"{checkpoints.timeout_s}s"), "savepoints.timeout"),
    )
    _check_backup_interval(recovery, checkpoints)
    return Settings(
        pipeline=name,
        flow=cfg.str("pipeline.flow", f"dataflows.pipelines.{name}:flow"),
        workers=cfg.int("pipeline.workers", 1, minimum=1),
        code_version=cfg.str("pipeline.code-version", ""),
        recovery=recovery,
        checkpoints=checkpoints,
        savepoints=savepoints,
        security=SecuritySettings(
            sec.str("signing-key-env", "STREAMFORGE_SIGNING_KEY"),
            allow_unsigned=sec.bool("allow-unsigned", False),
            require_signing_key=sec.bool("require-signing-key", False),
        ),
        metrics=MetricsSettings(
            port=met.int("port", 9464, minimum=0),
            host=met.str("host", "0.0.0.0"),
            unhealthy_after_intervals=met.float("unhealthy-after-intervals", 3.0),
        ),
    )
