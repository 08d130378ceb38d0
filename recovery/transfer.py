"""Large-object transfers: multipart, parallel, through boto3's transfer manager.

A packed checkpoint (`recovery.pack`) is a few large objects rather than one
small object per partition, so the cost is the bytes, not the requests. For an
``s3://`` store, `put_file` / `get_file` go through s3transfer's
`TransferManager` (``boto3.s3.transfer.create_transfer_manager``): an object
above `MULTIPART_THRESHOLD` is sent as parts of `PART_SIZE` and fetched as
ranged GETs, `CONCURRENCY` at a time. Every transfer runs inside the store's
own retry loop (`recovery.store.S3Store._call`: bounded retries of 5xx,
timeouts and resets with jittered backoff, then `StoreError`; a missing object
is `StoreNotFound`), so a transfer fails exactly like a `put`/`get` does.
Any other store (``file://``, or a wrapper such as restore's patient store)
gets the whole object through its `put`/`get`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from recovery.store import ObjectStore, S3Store

__all__ = ["CONCURRENCY", "MULTIPART_THRESHOLD", "PART_SIZE", "get_file", "put_file"]

# One PUT / GET up to 64 MiB (a checkpoint of 1M keys packs into one ~19 MiB object): parts
# pay a request each plus CreateMultipartUpload and CompleteMultipartUpload, which a store
# that serves requests one at a time (moto) does not overlap.
# bench/checkpoint.py at 1M keys: the full's upload 0.39-0.61 s as 3 parts of 8 MiB, 0.15 s
# as one PUT (session 25). AWS recommends multipart from about 100 MB
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html).
MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
CONCURRENCY = 8


def _manager(store: S3Store):  # type: ignore[no-untyped-def]
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    config = TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=PART_SIZE,
        max_concurrency=CONCURRENCY,
        num_download_attempts=1,  # retries are the store's (one policy, one place)
    )
    return create_transfer_manager(store._client, config)


def put_file(store: ObjectStore, key: str, path: Path) -> None:
    """Upload the file at `path` as object `key` (multipart above the threshold on S3)."""
    if not isinstance(store, S3Store):
        store.put(key, Path(path).read_bytes())
        return
    extra = {"ServerSideEncryption": store.sse} if store.sse else {}

    def upload() -> None:
        with _manager(store) as manager:
            manager.upload(str(path), store.bucket, store._key(key), extra_args=extra).result()

    store._call("put", key, upload)


def get_file(store: ObjectStore, key: str, path: Path) -> None:
    """Download object `key` to `path` (parallel ranged GETs above the threshold on S3).

    `StoreNotFound` if the object does not exist; `path` is complete or absent."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.part")
    try:
        if not isinstance(store, S3Store):
            partial.write_bytes(store.get(key))
        else:

            def download() -> None:
                with _manager(store) as manager:
                    manager.download(store.bucket, store._key(key), str(partial)).result()

            store._call("get", key, download)
        shutil.move(partial, path)
    finally:
        partial.unlink(missing_ok=True)
