"""Faults against a real (moto) S3 over HTTP: kill -9 mid-upload, outage, credentials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recovery.checkpoint import list_checkpoints, take_checkpoint
from recovery.partitions import init_partitions
from recovery.restore import restore
from recovery.store import StoreError, open_store
from tests.fixtures.s3 import MotoS3, S3Target, make_bucket
from tests.test_recovery_support import counting_flow, run, segments

PIPE = "orders"

# take_checkpoint in a child process whose store sleeps after each object put,
# so the test can kill -9 it between the first object and the manifest.
_SLOW_CHILD = """
import sys, time
from pathlib import Path
from recovery.checkpoint import take_checkpoint
from recovery.store import open_store

class SlowStore:
    def __init__(self, inner):
        self.inner, self.url = inner, inner.url
    def put(self, key, data):
        self.inner.put(key, data)
        if "/checkpoints/" in key:  # not the checkpoint lease (orders/leases/...)
            print("PUT", key, flush=True)
            time.sleep(60)
    def __getattr__(self, name):
        return getattr(self.inner, name)

store = SlowStore(open_store(sys.argv[2], endpoint_url=sys.argv[3]))
take_checkpoint(Path(sys.argv[1]), store, pipeline="orders", incremental=True)
"""


@pytest.fixture
def flow_dir(tmp_path: Path) -> Path:
    rd = tmp_path / "rec"
    init_partitions(rd, 3)
    run(counting_flow(segments([["k", 300, 100, 1]]), []), rd)
    return rd


def test_sigkill_during_upload_never_chosen(
    tmp_path: Path, flow_dir: Path, s3_bucket: S3Target
) -> None:
    store = open_store(s3_bucket.url, endpoint_url=s3_bucket.endpoint_url)
    good = take_checkpoint(flow_dir, store, pipeline=PIPE, incremental=True)
    run(counting_flow(segments([["k", 300, 100, 1], ["k", 10, 10, 5]]), []), flow_dir)
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CHILD, str(flow_dir), s3_bucket.url, s3_bucket.endpoint_url],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode()  # blocks until the first object is uploaded
        assert line.startswith("PUT ") and "pack-0.sfpk" in line  # every delta, in one pack
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert any(k.endswith("pack-0.sfpk") for k in store.list(f"{PIPE}/checkpoints/"))
    assert [m.id for m in list_checkpoints(store, PIPE)] == [good.id]

    result = restore(
        tmp_path / "restored",
        checkpoint_store=store,
        savepoint_store=store,
        pipeline=PIPE,
        partition_count=3,
    )
    assert (result.chosen, result.id) == ("checkpoint", good.id)
    assert any("incomplete" in n for n in result.notes)
    # The next checkpoint after the crash still publishes (and is chosen).
    again = take_checkpoint(flow_dir, store, pipeline=PIPE, incremental=True)
    assert list_checkpoints(store, PIPE)[0].id == again.id


@pytest.fixture
def private_s3(private_moto_s3: MotoS3) -> Iterator[tuple[MotoS3, str]]:
    yield private_moto_s3, make_bucket(private_moto_s3.endpoint_url)


def test_s3_outage_fails_then_recovers(tmp_path: Path, flow_dir: Path, private_s3) -> None:
    server, bucket = private_s3
    store = open_store(f"s3://{bucket}/sf", endpoint_url=server.endpoint_url, retries=1)
    first = take_checkpoint(flow_dir, store, pipeline=PIPE)
    server.stop()
    with pytest.raises(StoreError, match="failed after 2 attempt"):
        take_checkpoint(flow_dir, store, pipeline=PIPE)
    server.start()
    second = take_checkpoint(flow_dir, store, pipeline=PIPE)
    assert [m.id for m in list_checkpoints(store, PIPE)] == [second.id, first.id]


def test_wrong_credentials_error_names_no_secret(
    flow_dir: Path, s3_bucket: S3Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    import moto.settings

    secret, key_id = "wrong-secret-value-123", "AKIAWRONGKEYID0000"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys now
    store = open_store(s3_bucket.url, endpoint_url=s3_bucket.endpoint_url)
    with pytest.raises(StoreError) as err:
        take_checkpoint(flow_dir, store, pipeline=PIPE)
    text = str(err.value) + repr(err.value)
    assert "refused the credentials" in text and "InvalidAccessKeyId" in text
    assert secret not in text and key_id not in text


def test_missing_credentials_error(
    s3_bucket: S3Target, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = open_store(s3_bucket.url, endpoint_url=s3_bucket.endpoint_url)
    with pytest.raises(StoreError, match="no AWS credentials found"):
        store.list("x")


def test_s3_store_basics_and_sse(s3_bucket: S3Target) -> None:
    store = open_store(s3_bucket.url, endpoint_url=s3_bucket.endpoint_url, sse="AES256")
    store.put("a/b/c.bin", b"\x00\x01")
    assert store.get("a/b/c.bin") == b"\x00\x01"
    assert store.exists("a/b/c.bin") and not store.exists("a/b/zz")
    assert store.list("a/") == ["a/b/c.bin"]
    store.delete("a/b/c.bin")
    assert store.list("a/") == []
    with pytest.raises(StoreError, match="not found"):
        store.get("a/b/c.bin")
