"""One checkpoint at a time per pipeline: a local file lock AND a lease object in the store.

The supervisor's periodic checkpoints and `streamforge checkpoint create` must not
overlap: one's retention would delete the other's in-flight objects, and both share
the cache of sealed copies that the next delta is computed against. Two guards, each
for what the other cannot see:

- `local_lock(recovery_dir)`: `fcntl.flock(LOCK_EX)` on `<recovery_dir>.checkpoint-lock`
  (next to the recovery directory, never inside it). Serialises every checkpoint of
  this recovery directory on this host, supervisor and CLI alike, including their
  use of the local cache (`<recovery_dir>.checkpoint-cache`: the parent of the next
  delta). The kernel releases it when the holder dies, so a kill -9 leaves no lock.
- `CacheLock`: the same kind of lock on `cache.lock` inside the cache, held by every
  checkpoint for its whole run and handed over to its background digest of the cache,
  which outlives the checkpoint (and so `local_lock`): no other process (nor the same
  one) reads or changes the cache until that digest has written its meta.
- `StoreLease`: the object `{pipeline}/leases/checkpoint.json` in the checkpoint
  store, `{owner, snapshot_id, needs, expires_at}`. Protects the store from a writer
  the file lock cannot see (a CLI on another host or container): written before the
  copy, re-read before the manifest is published (a checkpoint whose lease was taken
  over is not published), and read by retention, which never deletes the in-flight
  snapshot it names or the parent chain it `needs`. The lease expires `ttl` after it
  was written (`checkpoints.timeout` plus a margin), so a holder that died frees it;
  a holder on this host whose pid is gone frees it at once.

The store has no compare-and-swap, so two writers racing for a free lease can both
write it; each re-reads it right after, and the one that does not find itself backs
off; the check before publishing catches the rest.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from recovery.store import ObjectStore, StoreNotFound

__all__ = [
    "CACHE_LOCK",
    "CacheLock",
    "CheckpointBusy",
    "Lease",
    "StoreLease",
    "cache_lock_path",
    "lease_key",
    "live_lease",
    "local_lock",
    "pid_alive",
]

_POLL_S = 0.05
CACHE_LOCK = "cache.lock"  # in the checkpoint cache directory, see CacheLock


class CheckpointBusy(Exception):
    """Another checkpoint of the same pipeline holds the lock or the lease."""


def lock_path(recovery_dir: Path) -> Path:
    return Path(f"{Path(recovery_dir).absolute()}.checkpoint-lock")


def _flock(path: Path, wait_s: float, busy: str) -> IO[str]:
    """`path` opened and exclusively `fcntl.flock`-ed, polling at most `wait_s` for it;
    `CheckpointBusy` (`busy`, the lock's path and the wait) if it stays held. The lock is
    the returned open file (per open file description: a second open conflicts even in
    the same process); closing it releases the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 - the open file is the lock, closed by its holder
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                raise CheckpointBusy(f"{busy} (lock {path}); waited {wait_s:g}s") from None
            time.sleep(_POLL_S)


@contextmanager
def local_lock(recovery_dir: Path, wait_s: float) -> Iterator[None]:
    """Hold the exclusive file lock of `recovery_dir`, waiting at most `wait_s` for it."""
    f = _flock(lock_path(recovery_dir), wait_s,
               f"another checkpoint of {recovery_dir} is running on this host")
    try:
        yield
    finally:
        f.close()


def cache_lock_path(cache_dir: Path) -> Path:
    return Path(cache_dir).absolute() / CACHE_LOCK


class CacheLock:
    """The exclusive lock of a checkpoint cache (`CACHE_LOCK` in it, any process): held by
    whoever reads or changes the cache's copies or meta, from `acquire` until `release`.

    Unlike `local_lock` it is not tied to a block: a checkpoint `hand_over`s it to the
    thread that digests the cache after the recovery directory's lock is released (no
    moment where neither holds it). The holder never waits for `local_lock` (the same
    process's next checkpoint waits for it while holding that one: no deadlock). A dead
    holder's lock is dropped by the kernel."""

    def __init__(self, file: IO[str] | None) -> None:
        self._file = file

    @classmethod
    def acquire(cls, cache_dir: Path, wait_s: float) -> CacheLock:
        """The cache's lock, waiting at most `wait_s`; `CheckpointBusy` naming it if it stays
        held (another checkpoint, or the background digest of one, in any process)."""
        return cls(_flock(cache_lock_path(cache_dir), wait_s,
                          f"the checkpoint cache {cache_dir} is in use (a checkpoint, or its "
                          "background digest, in this or another process)"))

    def __enter__(self) -> CacheLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def hand_over(self) -> CacheLock:
        """The lock as a new holder (the same open file); this one no longer holds it."""
        file, self._file = self._file, None
        return CacheLock(file)

    def release(self) -> None:
        """Release the lock if this holder still has it (idempotent)."""
        file, self._file = self._file, None
        if file is not None:
            file.close()


def lease_key(pipeline: str) -> str:
    return f"{pipeline}/leases/checkpoint.json"


@dataclass
class Lease:
    """Who is checkpointing the pipeline, which snapshot, and until when (epoch seconds)."""

    owner: str
    expires_at: float
    snapshot_id: str | None = None
    needs: list[str] = field(default_factory=list)  # the parent chain the snapshot deltas onto

    @property
    def host(self) -> str:
        return self.owner.split(":", 1)[0]

    @property
    def pid(self) -> int | None:
        try:
            return int(self.owner.split(":")[1])
        except (IndexError, ValueError):
            return None

    def live(self, now: float | None = None) -> bool:
        """Not expired, and (on this host) its process still exists."""
        if self.expires_at <= (time.time() if now is None else now):
            return False
        if self.host == socket.gethostname() and self.pid is not None:
            return pid_alive(self.pid)
        return True


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host and has not exited: a zombie (exited, not yet
    reaped by its parent) is gone; a process of another user (EPERM) exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_lease(store: ObjectStore, pipeline: str) -> Lease | None:
    """The lease object, or None if there is none (or it is unreadable: treated as free)."""
    try:
        data = json.loads(store.get(lease_key(pipeline)))
        return Lease(**data)
    except StoreNotFound:
        return None
    except (ValueError, TypeError):
        return None


def live_lease(store: ObjectStore, pipeline: str) -> Lease | None:
    """The lease if it is held right now (retention reads this)."""
    lease = read_lease(store, pipeline)
    return lease if lease is not None and lease.live() else None


class StoreLease:
    """This process's claim on `{pipeline}/leases/checkpoint.json` (see module doc)."""

    def __init__(self, store: ObjectStore, pipeline: str, ttl_s: float) -> None:
        self.store, self.pipeline, self.ttl_s = store, pipeline, ttl_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease = Lease(self.owner, 0.0)

    def acquire(self, wait_s: float) -> None:
        """Write the lease once no live foreign lease exists; CheckpointBusy after `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            other = read_lease(self.store, self.pipeline)
            if other is None or other.owner == self.owner or not other.live() or self._previous_me(other):
                self._write()
                mine = read_lease(self.store, self.pipeline)
                if mine is not None and mine.owner == self.owner:
                    return
                other = mine
            if time.monotonic() > deadline:
                holder = f"{other.owner}, snapshot {other.snapshot_id}" if other else "unknown"
                raise CheckpointBusy(
                    f"another checkpoint of pipeline {self.pipeline} is in progress ({holder}); "
                    f"waited {wait_s:g}s"
                )
            time.sleep(_POLL_S)

    def _previous_me(self, other: Lease) -> bool:
        """Our host and pid but another token: a previous incarnation (a restarted pod keeps its
        hostname and, in its own pid namespace, its pid). Only asked while holding the local lock,
        so no other checkpoint of this process is running."""
        return other.host == socket.gethostname() and other.pid == os.getpid()

    def claim(self, snapshot_id: str, needs: list[str]) -> None:
        """Name the snapshot about to be uploaded (and the chain it needs) before uploading."""
        self.lease.snapshot_id, self.lease.needs = snapshot_id, list(needs)
        self._write()

    def check(self) -> None:
        """Before publishing: the lease must still be ours and unexpired."""
        now = read_lease(self.store, self.pipeline)
        if now is None or now.owner != self.owner or now.expires_at <= time.time():
            holder = now.owner if now else "nobody"
            raise CheckpointBusy(
                f"the checkpoint lease of pipeline {self.pipeline} was lost (now held by {holder}); "
                "not publishing"
            )

    def release(self) -> None:
        current = read_lease(self.store, self.pipeline)
        if current is not None and current.owner == self.owner:
            self.store.delete(lease_key(self.pipeline))

    def _write(self) -> None:
        self.lease.expires_at = time.time() + self.ttl_s
        self.store.put(lease_key(self.pipeline), json.dumps(asdict(self.lease)).encode())
