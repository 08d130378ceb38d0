"""The pipeline an operator command acts on: its config, settings and stores.

Every state command (`run`, `checkpoint`, `savepoint`, `restore`, `state`,
`upgrade`, `dlq`) starts from a `Job`: the config file (from `--config`,
`$STREAMFORGE_CONFIG` or `config/<pipeline>.yaml`, in that order, as for a flow
run directly: `dataflows.config.resolve_config_path`), the typed settings, and
the checkpoint / savepoint object stores opened on demand. The supervisor of a
job writes its pid and status next to the recovery directory, so other
commands can find (and stop) it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from dataflows.config import Config, ConfigError, load_config, resolve_config_path
from recovery.lease import pid_alive
from streamforge_ops.cli import CliError
from streamforge_ops.settings import Settings, StoreSettings, read_settings

__all__ = ["Job", "add_config_arg", "load_job", "read_status", "snapshot_id", "supervisor_pid"]

SNAPSHOT_KINDS = ("checkpoint", "savepoint")


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` (default: `$STREAMFORGE_CONFIG`)."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="pipeline config YAML (default: $STREAMFORGE_CONFIG)",
    )


def snapshot_id(kind: str) -> Callable[[str], str]:
    """The argparse `type` of a `kind` id argument: `ID` or `kind:ID`, the spelling of a
    snapshot target everywhere (`run --restore savepoint:ID`, `restore savepoint:ID`,
    `savepoint describe savepoint:ID`); the other kind's prefix is refused."""

    def parse(text: str) -> str:
        prefix, sep, ident = text.partition(":")
        if not sep or prefix not in SNAPSHOT_KINDS:
            return text
        if prefix != kind or not ident:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind}: give ID or {kind}:ID")
        return ident

    return parse


def _open_store(store: StoreSettings) -> Any:
    from recovery.store import open_store

    return open_store(
        store.url, endpoint_url=store.endpoint_url, region=store.region, sse=store.sse
    )


@dataclass
class Job:
    """A loaded pipeline config and what hangs off it."""

    cfg: Config
    config_path: Path
    settings: Settings

    @property
    def pipeline(self) -> str:
        return self.settings.pipeline

    @property
    def recovery_dir(self) -> Path:
        return self.settings.recovery.dir

    @cached_property
    def checkpoint_store(self) -> Any:
        return _open_store(self.settings.checkpoints.store)

    @cached_property
    def savepoint_store(self) -> Any:
        sp = self.settings.savepoints.store
        if sp == self.settings.checkpoints.store:
            return self.checkpoint_store
        return _open_store(sp)

    @property
    def signing_key(self) -> bytes | None:
        return self.settings.security.signing_key()

    @property
    def pid_file(self) -> Path:
        """`<recovery dir's parent>/supervisor.pid`: the running supervisor's pid."""
        return self.recovery_dir.absolute().parent / "supervisor.pid"

    @property
    def status_file(self) -> Path:
        """`<recovery dir's parent>/supervisor.json`: pid, child pid, port, phase."""
        return self.recovery_dir.absolute().parent / "supervisor.json"


def load_job(config: str | None, *, pipeline: str | None = None, store: str | None = None) -> Job:
    """Load the config (`dataflows.config.resolve_config_path`: `--config`, else
    `$STREAMFORGE_CONFIG`, else `config/<pipeline>.yaml`); `store` overrides both store URLs."""
    try:
        path = resolve_config_path(config, pipeline)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    cfg = load_config(path)
    settings = read_settings(cfg)
    if pipeline and not config and settings.pipeline != pipeline:
        raise CliError(f"{path} configures pipeline {settings.pipeline!r}, not {pipeline!r}")
    if store:
        settings = settings.with_store(store)
    return Job(cfg, path.absolute(), settings)


def read_status(job: Job) -> dict[str, Any]:
    """The supervisor's last written status, or {} if none."""
    try:
        return dict(json.loads(job.status_file.read_text()))
    except (OSError, ValueError):
        return {}


def supervisor_pid(job: Job) -> int | None:
    """Pid of the live supervisor of this job, or None."""
    try:
        pid = int(job.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None
