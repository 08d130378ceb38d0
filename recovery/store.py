"""Object stores for checkpoints and savepoints: `file://` and `s3://`.

An `ObjectStore` maps string keys (``a/b/c``, relative to the store's root)
to bytes. Two implementations:

- `FileStore` (``file:///abs/dir`` or ``file://rel/dir``): the embedded
  default. `put` writes a temporary file and renames it, so a reader never
  sees half an object.
- `S3Store` (``s3://bucket/prefix``): boto3, with the endpoint, region and
  credentials of the standard AWS chain (env vars, config files, instance
  roles), an optional server-side encryption setting, and bounded retries
  of transient failures (5xx such as ``503 SlowDown``, timeouts, resets)
  with the jittered exponential backoff of `dataflows.retry.RetryPolicy`.

Every failure surfaces as `StoreError`, whose message names the store URL,
the operation and the error code, and never a credential; a missing object
is `StoreNotFound` (a definite answer, not a transient failure).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable
from urllib.parse import urlparse

from dataflows.retry import RetryPolicy

__all__ = ["FileStore", "ObjectStore", "S3Store", "StoreError", "StoreNotFound", "open_store"]

T = TypeVar("T")

_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "ExpiredToken",
        "InvalidToken",
        "UnrecognizedClientException",
        "AuthFailure",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class StoreError(Exception):
    """An object store operation failed; the message never contains secrets."""


class StoreNotFound(StoreError):
    """The object does not exist (the store answered; nothing to retry)."""


@runtime_checkable
class ObjectStore(Protocol):
    """Bytes by key. Keys use ``/`` separators and are relative to `url`."""

    url: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def list(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...


class FileStore:
    """Objects as files under a local directory (the embedded default)."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url

    def _path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise StoreError(f"{self.url}: invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{random.getrandbits(32):x}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"{self.url}: put {key}: {exc.strerror or exc}") from None

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreNotFound(f"{self.url}: object {key} not found") from None
        except OSError as exc:
            raise StoreError(f"{self.url}: get {key}: {exc.strerror or exc}") from None

    def list(self, prefix: str) -> list[str]:
        """Keys starting with `prefix`, walking only the prefix's directory. A directory
        deleted while it is walked (another process's delete removes emptied directories)
        is skipped: `os.walk` ignores scandir errors."""
        parts = [p for p in prefix.split("/")[:-1] if p]
        if any(p in (".", "..") for p in parts):
            raise StoreError(f"{self.url}: invalid prefix {prefix!r}")
        keys = []
        for dirpath, _dirs, files in os.walk(self.root.joinpath(*parts)):
            for name in files:
                if not name.startswith("."):
                    key = (Path(dirpath) / name).relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


class S3Store:
    """Objects in an S3 bucket under a prefix, through boto3."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        sse: str | None = None,
        retries: int = 3,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.sse = sse
        self.retries = max(0, retries)
        self._retry = RetryPolicy(
            max_attempts=self.retries + 1, initial_backoff_s=0.2, max_backoff_s=2.0, jitter=1.0
        )
        config = Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=3,
            read_timeout=30,
        )
        endpoint = endpoint_url or os.environ.get("STREAMFORGE_S3_ENDPOINT") or None
        try:
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint, region_name=region, config=config
            )
        except Exception as exc:  # bad region/endpoint/profile
            raise StoreError(
                f"{self.url}: cannot create S3 client ({type(exc).__name__})"
            ) from None

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        """Run `fn` with bounded retries; translate errors to StoreError."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        delays = self._retry.delays()
        attempt = 0
        while True:
            try:
                return fn()
            except (NoCredentialsError, PartialCredentialsError):
                raise StoreError(
                    f"{self.url}: {op} {key}: no AWS credentials found (set AWS_ACCESS_KEY_ID/"
                    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role)"
                ) from None
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code in _NOT_FOUND_CODES:
                    raise StoreNotFound(f"{self.url}: object {key} not found") from None
                if code in _CREDENTIAL_CODES or status == 403:
                    raise StoreError(
                        f"{self.url}: {op} {key}: S3 refused the credentials ({code}); check "
                        "the access key id, secret key and permissions of the AWS profile"
                    ) from None
                if code == "NoSuchBucket":
                    raise StoreError(f"{self.url}: bucket {self.bucket} does not exist") from None
                retryable = (
                    status is None or status >= 500 or code in ("SlowDown", "RequestTimeout")
                )
                error = f"{code} (HTTP {status})"
            except BotoCoreError as exc:
                retryable = True
                error = type(exc).__name__
            delay = next(delays, None) if retryable else None
            if delay is None:
                raise StoreError(
                    f"{self.url}: {op} {key} failed after {attempt + 1} attempt(s): {error}"
                ) from None
            time.sleep(delay)
            attempt += 1

    def put(self, key: str, data: bytes) -> None:
        extra = {"ServerSideEncryption": self.sse} if self.sse else {}
        self._call(
            "put",
            key,
            lambda: self._client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, **extra
            ),
        )

    def get(self, key: str) -> bytes:
        def fetch() -> bytes:
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            return bytes(body.read())

        return self._call("get", key, fetch)

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0

        def listing() -> list[str]:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            return [obj["Key"][strip:] for page in pages for obj in page.get("Contents", [])]

        return sorted(self._call("list", prefix, listing))

    def delete(self, key: str) -> None:
        self._call(
            "delete",
            key,
            lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)),
        )

    def exists(self, key: str) -> bool:
        try:
            self._call(
                "head",
                key,
                lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(key)),
            )
        except StoreNotFound:
            return False
        return True


def open_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    sse: str | None = None,
    retries: int = 3,
) -> ObjectStore:
    """Open ``file:///abs``, ``file://rel`` (relative to the cwd) or ``s3://bucket/prefix``.

    A bare path (no scheme) is treated as a local directory.
    """
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"{url}: an s3 URL needs a bucket (s3://bucket/prefix)")
        return S3Store(
            parsed.netloc,
            parsed.path,
            endpoint_url=endpoint_url,
            region=region,
            sse=sse,
            retries=retries,
        )
    if parsed.scheme in ("file", ""):
        raw = url[len("file://") :] if parsed.scheme == "file" else url
        root = Path(raw).expanduser().absolute()
        return FileStore(root, f"file://{root}")
    raise StoreError(f"{url}: unsupported store scheme {parsed.scheme!r} (use file:// or s3://)")
