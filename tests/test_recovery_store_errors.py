"""A store that cannot be read fails the restore; it never becomes a fallback or a fresh start.

Real HTTP all the way: boto3 talks to moto through `tests.fixtures.fault_proxy`,
which answers ``503 SlowDown`` (the XML body S3 sends) or resets the TCP
connection for the requests its `match` selects. Object reads are
``GET /bucket/key`` (path-style), listings ``GET /bucket?list-type=2...``.

On the old code every one of these restores "succeeded": the unreadable
candidates were "rejected", the chain fell back to a fresh start, and the
empty flow's first frontier made every later start resume "local" progress.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main

from dataflows.config import load_config
from dataflows.retry import RetryPolicy
from recovery.checkpoint import take_checkpoint
from recovery.partitions import init_partitions, logical_digest, partition_files
from recovery.restore import StoreUnavailable, restore
from recovery.store import ObjectStore, open_store
from streamforge_ops.cli import CliError, main
from streamforge_ops.job import load_job
from streamforge_ops.restoring import prepare, restore_required
from tests.fixtures.fault_proxy import FaultS3
from tests.supervised_flow import build
from tests.supervisor_harness import Workspace
from tests.test_recovery_support import counting_flow, run, segments, uploaded_digests

PIPE = "orders"
FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
OBJECT_READS = r"^GET /[^/?]+/.*\.(sqlite3\.z|sfpk)"  # one object per partition, or packed
MANIFEST_READS = r"^GET /[^/?]+/.*manifest\.json"


@pytest.fixture
def stored(tmp_path: Path, fault_s3: FaultS3) -> tuple[ObjectStore, list, Path]:
    """Two checkpoints in S3 (through the proxy); a local dir holding older progress."""
    rd = tmp_path / "rec"
    init_partitions(rd, 2)
    store = open_store(fault_s3.url, endpoint_url=fault_s3.endpoint_url, retries=1)
    spec: list = []
    taken = []
    for round_ in range(2):
        spec.append(["k", 30, 10, round_ + 1])
        run(counting_flow(segments(spec), []), rd)
        taken.append(take_checkpoint(rd, store, pipeline=PIPE))
    local = tmp_path / "local"
    init_partitions(local, 2)
    run(counting_flow(segments([["k", 5, 5, 1]]), []), local)
    return store, taken, local


def _digests(rd: Path) -> list[str]:
    return [logical_digest(p) for p in partition_files(rd)]


def _restore(store: ObjectStore, into: Path) -> Any:
    return restore(
        into, checkpoint_store=store, savepoint_store=store, pipeline=PIPE,
        partition_count=2, retry=FAST,
    )


@pytest.mark.parametrize(
    ("mode", "match", "error"),
    [
        ("slowdown", OBJECT_READS, "SlowDown (HTTP 503)"),
        ("reset", OBJECT_READS, "failed after 2 attempt(s)"),
        ("slowdown", MANIFEST_READS, "SlowDown (HTTP 503)"),
        ("reset", MANIFEST_READS, "failed after 2 attempt(s)"),
        ("expired", OBJECT_READS, "S3 refused the credentials (ExpiredToken)"),
    ],
)
def test_unreadable_store_fails_the_restore_and_keeps_local_state(
    stored, fault_s3: FaultS3, mode: str, match: str, error: str
) -> None:
    store, _, local = stored
    before = _digests(local)
    fault_s3.proxy.set_mode(mode, match=match)  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable) as err:
        _restore(store, local)
    text = str(err.value)
    assert error in text and "after 3 attempt(s)" in text and "--fresh" in text
    assert "nothing was restored" in text
    assert _digests(local) == before  # neither fresh nor half-restored
    assert [p.name for p in local.iterdir() if p.name.startswith(".")] == []  # no stage left
    # 3 restore attempts x 2 store attempts of the first read that failed (refused
    # credentials are not retried by the store: 1 each; a packed snapshot is one object)
    assert fault_s3.proxy.faulted >= (3 if mode == "expired" else 6)


def test_a_short_outage_is_ridden_out(stored, fault_s3: FaultS3, tmp_path: Path) -> None:
    store, (_, ck2), _ = stored
    fault_s3.proxy.set_mode("slowdown", count=3)  # 2 store attempts + 1 restore retry
    result = _restore(store, tmp_path / "out")
    assert (result.chosen, result.id, result.notes) == ("checkpoint", ck2.id, [])
    assert fault_s3.proxy.faulted == 3
    assert _digests(tmp_path / "out") == uploaded_digests(store, ck2)


# --- the operator's view: `streamforge restore` / `run` -----------------------------------


@pytest.fixture
def s3_job(tmp_path: Path, fault_s3: FaultS3, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A supervised-flow job whose store is S3 behind the proxy; one checkpoint taken."""
    ws = Workspace(tmp_path, n=30)
    store = {"dir": fault_s3.url, "endpoint-url": fault_s3.endpoint_url}
    cfg = ws.config(
        checkpoints={**store, "retry": {"max-attempts": 2, "initial-backoff": "10ms"}},
        savepoints=store,
    )
    monkeypatch.setenv("STREAMFORGE_CONFIG", str(cfg))
    init_partitions(ws.recovery, 4)
    _run_flow(cfg, ws.recovery)
    assert main(["checkpoint", "create", "--json"]) == 0
    shutil.rmtree(ws.recovery)  # a new pod: an empty volume
    return ws


def _run_flow(cfg: Path, rd: Path) -> None:
    run_main(build(load_config(cfg), version=1), epoch_interval=timedelta(seconds=0),
             recovery_config=RecoveryConfig(str(rd)))


def test_cli_restore_fails_with_exit_2_and_no_start_continues_without_it(
    s3_job: Workspace, fault_s3: FaultS3, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    fault_s3.proxy.set_mode("slowdown", match=OBJECT_READS)
    assert main(["restore", "--json"]) == 2
    err = capsys.readouterr().err
    assert "restore failed: the store could not be read" in err and "SlowDown" in err
    assert "--fresh" in err and "Traceback" not in err
    assert partition_files(s3_job.recovery) == []  # nothing to start an empty flow from
    assert "SlowDown" in (restore_required(s3_job.recovery) or "")
    assert main(["run", "--config", str(s3_job.root / "config.yaml")]) == 2  # the supervisor too
    err = capsys.readouterr().err
    assert "restore failed: the store could not be read" in err and "Traceback" not in err
    assert partition_files(s3_job.recovery) == []

    # --no-restore would continue from a state without the stored one: refused.
    job = load_job(None)
    with pytest.raises(CliError, match="last restore of 'sup' failed"):
        prepare(job, None, no_restore=True)
    # Local progress written after the failure (e.g. by a flow started by hand) is not
    # trusted: the next start consults the store again and restores the checkpoint.
    init_partitions(s3_job.recovery, 4)
    _run_flow(s3_job.config(), s3_job.recovery)
    fault_s3.proxy.set_mode("pass")
    decision = prepare(job, None)
    assert decision.chosen == "checkpoint", decision.describe()
    assert restore_required(s3_job.recovery) is None
    assert prepare(job, None).chosen == "local"  # from now on, local progress is resumed


def test_cli_restore_fresh_is_the_explicit_way_out(
    s3_job: Workspace, fault_s3: FaultS3, capsys: pytest.CaptureFixture[str]
) -> None:
    fault_s3.proxy.set_mode("reset", match=MANIFEST_READS)
    assert main(["restore"]) == 2
    capsys.readouterr()
    assert main(["restore", "--fresh", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chosen"] == "fresh" and "store not consulted" in out["reason"]
    assert len(partition_files(s3_job.recovery)) == 4
    assert restore_required(s3_job.recovery) is None
    assert main(["restore", "--fresh", "savepoint", "x"]) == 2
    capsys.readouterr()
    fault_s3.proxy.set_mode("slowdown", match=MANIFEST_READS)  # any other command: a message
    assert main(["checkpoint", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamforge: store error: ") and "SlowDown" in err
