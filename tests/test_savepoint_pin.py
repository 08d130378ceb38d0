"""Pinned savepoints on S3 (moto's server over real HTTP): `savepoint create --pin`, `pin`,
`unpin`; a pinned savepoint survives prune, delete and checkpoint retention, and its objects
carry the tag the bucket lifecycle rule (`deploy render` -> s3-lifecycle.json) filters on.

moto stores and returns a bucket lifecycle configuration and validates its shape, but never
expires objects: that part is AWS's documented behaviour (a rule whose Filter is an `And` of
`Prefix` and `Tags` applies only to objects matching the prefix and carrying every tag;
docs.aws.amazon.com/AmazonS3/latest/userguide/intro-lifecycle-filters.html).
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from recovery.savepoint import PIN_TAG
from tests.fixtures.s3 import S3Target
from tests.state_fixture import run_version_1
from tests.supervisor_harness import Workspace, cli


@pytest.fixture
def job(tmp_path: Path, s3_bucket: S3Target, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = Workspace(tmp_path, n=20)
    store = {"dir": s3_bucket.url, "endpoint-url": s3_bucket.endpoint_url}
    cfg = ws.config(checkpoints={**store, "incremental": False}, savepoints=store)
    monkeypatch.setenv("STREAMFORGE_CONFIG", str(cfg))
    run_version_1(cfg, ws.recovery)
    return cfg


def pin_tags(s3: S3Target, snap_id: str) -> dict[str, str]:
    """key -> value of the pin tag, for every object of savepoint `snap_id`."""
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    prefix = f"streamforge/sup/savepoints/{snap_id}/"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix)["Contents"]]
    return {
        k[len(prefix):]: {t["Key"]: t["Value"] for t in client.get_object_tagging(
            Bucket=s3.bucket, Key=k)["TagSet"]}.get(PIN_TAG, "<none>")
        for k in keys
    }


def test_pinned_savepoints_survive_prune_delete_and_retention(
    job: Path, s3_bucket: S3Target, capsys: pytest.CaptureFixture[str]
) -> None:
    pinned = cli(capsys, "savepoint", "create", "--pin", "--name", "release-1")
    assert pinned["pinned"] is True
    tags = pin_tags(s3_bucket, pinned["id"])
    # the manifest, the pin record and the partitions' object(s) (one pack: recovery/pack.py)
    assert "manifest.json" in tags and "pinned.json" in tags and "pack-0.sfpk" in tags
    assert set(tags.values()) == {"true"}, tags
    middle, newest = cli(capsys, "savepoint", "create")["id"], cli(capsys, "savepoint", "create")["id"]
    assert set(pin_tags(s3_bucket, middle).values()) == {"false"}

    assert cli(capsys, "savepoint", "prune", "--max-count", "1")["deleted"] == [middle]
    assert "is pinned" in cli(capsys, "savepoint", "delete", pinned["id"], code=2)
    for _ in range(4):  # checkpoints.retained is 3: retention deletes checkpoints only
        cli(capsys, "checkpoint", "create")
    assert len(cli(capsys, "checkpoint", "list")) == 3
    assert [s["id"] for s in cli(capsys, "savepoint", "list")] == [newest, pinned["id"]]
    assert cli(capsys, "savepoint", "describe", "release-1")["pinned"] is True

    assert cli(capsys, "savepoint", "unpin", "release-1") == {"id": pinned["id"], "pinned": False}
    assert set(pin_tags(s3_bucket, pinned["id"]).values()) == {"false"}
    assert cli(capsys, "savepoint", "describe", pinned["id"])["pinned"] is False
    assert cli(capsys, "savepoint", "prune", "--max-count", "1")["deleted"] == [pinned["id"]]
    assert cli(capsys, "savepoint", "pin", newest)["pinned"] is True
    assert set(pin_tags(s3_bucket, newest).values()) == {"true"}
    assert "no savepoint 'nope'" in cli(capsys, "savepoint", "pin", "nope", code=2)


def test_deploy_render_writes_the_lifecycle_rule_moto_accepts(
    job: Path, s3_bucket: S3Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """s3-lifecycle.json expires objects under the savepoints prefix tagged unpinned after
    savepoints.max-age (7d by default); moto stores it and gives it back unchanged."""
    out = tmp_path / "k8s"
    summary = cli(capsys, "deploy", "render", "--config", str(job), "--output", str(out))
    config = json.loads((out / "s3-lifecycle.json").read_text())
    assert summary["lifecycle"] == str(out / "s3-lifecycle.json")
    (rule,) = config["Rules"]
    assert rule["Filter"] == {"And": {"Prefix": "streamforge/sup/savepoints/",
                                      "Tags": [{"Key": PIN_TAG, "Value": "false"}]}}
    assert rule["Expiration"] == {"Days": 7} and rule["Status"] == "Enabled"
    client = boto3.client("s3", endpoint_url=s3_bucket.endpoint_url, region_name="us-east-1")
    client.put_bucket_lifecycle_configuration(Bucket=s3_bucket.bucket, LifecycleConfiguration=config)
    back = client.get_bucket_lifecycle_configuration(Bucket=s3_bucket.bucket)["Rules"]
    assert back[0]["Filter"] == rule["Filter"] and back[0]["Expiration"]["Days"] == 7


def test_pin_on_a_file_store_is_a_marker(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace(tmp_path, n=10)
    cfg = ws.config()
    monkeypatch.setenv("STREAMFORGE_CONFIG", str(cfg))
    run_version_1(cfg, ws.recovery)
    old = cli(capsys, "savepoint", "create", "--pin")["id"]
    cli(capsys, "savepoint", "create")
    assert cli(capsys, "savepoint", "prune", "--max-age", "0s")["deleted"] == []
    assert list((tmp_path / "store" / "sup" / "savepoints" / old).glob("pinned.json"))
