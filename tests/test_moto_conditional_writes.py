"""The S3 double honours conditional writes atomically, as S3 does.

Tansu's S3 storage (the chaos harness's durable broker) keeps its transactions in one
`meta.json` that it updates by read-modify-write with `PutObject` + `If-Match: <etag>`
(tansu-storage/src/dynostore/opticon.rs) and creates batch objects with `If-None-Match: *`.
S3 decides such writes atomically: "If multiple conditional writes occur for the same object
name, the first write operation to finish succeeds. Amazon S3 then fails subsequent writes
with a 412 Precondition Failed response" (Amazon S3 User Guide, "How to prevent object
overwrites with conditional writes"). moto 5.2's `put_object` checks the precondition and
writes later, with no lock between, while its server answers requests on threads: two
updates against the same etag both succeed and one is lost. The chaos harness saw exactly
that: transactions vanishing from Tansu's `meta.json` (TransactionalIdNotFound in the commit's
second step) and partitions whose last stable offset no longer moved.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.fixtures.s3 import MotoS3, make_bucket


@pytest.mark.parametrize("precondition", ["If-Match", "If-None-Match"])
def test_two_conditional_puts_on_the_same_version_one_wins(moto_s3: MotoS3, precondition: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.s3.models import S3Backend

    bucket = make_bucket(moto_s3.endpoint_url)
    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint_url, region_name="us-east-1")
    key = f"meta-{uuid.uuid4().hex[:6]}.json"
    etag = ""
    if precondition == "If-Match":
        etag = s3.put_object(Bucket=bucket, Key=key, Body=b"v0")["ETag"]

    both_checked = threading.Barrier(2, timeout=2)
    real_put = S3Backend.put_object

    def slow_put(self: S3Backend, *args: Any, **kwargs: Any) -> Any:
        # hold each write until both requests are past their precondition check (or 2 s):
        # without atomic conditional writes, both checks pass before either write lands
        try:
            both_checked.wait()
        except threading.BrokenBarrierError:
            pass
        return real_put(self, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "put_object", slow_put)
    outcomes: list[str] = []

    def put(body: bytes) -> None:
        condition = {"IfMatch": etag} if precondition == "If-Match" else {"IfNoneMatch": "*"}
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body, **condition)
            outcomes.append("ok")
        except ClientError as exc:
            outcomes.append(str(exc.response["Error"]["Code"]))

    threads = [threading.Thread(target=put, args=(body,)) for body in (b"v1", b"v2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["PreconditionFailed", "ok"], outcomes
