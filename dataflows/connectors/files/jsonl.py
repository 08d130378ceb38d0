"""JSON Lines files in and out, resumable by byte offset.

`JsonlSource` reads one or more files (a list of paths or glob patterns), one
partition per file. Each line becomes a `RawRecord` with the raw bytes (no
decoding: the parse step decides about bad UTF-8 or bad JSON), event id
`file:{path}:{line}` (1-based line number) and coordinates
`{path, line, offset}`. The partition's snapshot is `{"offset", "line"}`:
the byte offset just after the last emitted line, so a resume never repeats
or skips a line. `\\n` and `\\r\\n` endings are both stripped; blank lines
are skipped (they still count as lines). A line appended by `streamforge dlq
replay` (an envelope, see replay_lines.py) yields its original payload and
its original event id.

- batch mode (`tail=False`): a last line without a newline is emitted at end
  of file, then the partition ends.
- tail mode (`tail=True`): at end of file the partition polls for appended
  lines every `poll_interval` (never blocking); a line is emitted only once
  its newline is written, so a half-written line is never cut in two. Files
  are listed when the flow starts: a plain path that does not exist yet is
  waited for; a glob only matches files that exist at start.

A file that becomes shorter than the position already read (truncated or
replaced) raises `FileShrankError` instead of silently reading nothing.

`JsonlSink` writes one JSON document per line to a single file (one
partition, like Bytewax's `FileSink`). Every batch is flushed and fsynced;
the snapshot is the byte offset after it, and on resume the file is truncated
to that offset, so lines written after the last snapshot (and replayed by
Bytewax) are not duplicated: exactly-once for a file that is not rewritten by
anyone else. Without resume state (a fresh run) the file is truncated to 0.
Items are `(key, value)` pairs (Bytewax's convention for partitioned sinks);
`value` is encoded by `encode` (default `dataflows.json_codec.dumps`; it may
return bytes or str).

The JSON form of the stream messages (Event, Change, TableChange, Session,
LateEvent or any dataclass / dict) is `dataflows.json_codec`'s, the one of
every sink: strict JSON; dataclass fields recursively, with `"type"` = the
class name; bytes as UTF-8 text when they decode, else `{"base64": ...}`;
tuples as lists. `json_line(obj)` is that text, `to_jsonable(obj)` that value.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from dataflows.connectors.files.replay_lines import unwrap_replay_line
from dataflows.events import RawRecord, file_event_id
from dataflows.flow.pacing import EpochPacer
from dataflows.flow.threads import pin_thread_state
from dataflows.json_codec import dumps, to_jsonable

__all__ = [
    "FilePosition",
    "FileShrankError",
    "JsonlSink",
    "JsonlSinkPartition",
    "JsonlSource",
    "expand_paths",
    "json_line",
    "read_jsonl",
    "to_jsonable",
]


class FileShrankError(RuntimeError):
    """A source file is now shorter than the position already read: not resumable."""


class FilePosition(TypedDict):
    """Resume state of one source partition."""

    offset: int  # byte offset of the next line to read
    line: int  # number of lines already consumed


def json_line(obj: Any) -> str:
    """One line of JSON (no newline) for `obj`: `dataflows.json_codec.dumps` as text."""
    return dumps(obj).decode("utf-8")


def read_jsonl(path: str | os.PathLike[str]) -> list[Any]:
    """All JSON documents of a JSONL file (blank lines skipped); [] if it does not exist."""
    p = Path(path)
    if not p.exists():
        return []
    with p.open("rb") as f:
        return [json.loads(line) for line in f if line.strip()]


def expand_paths(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, keep_missing: bool) -> list[str]:
    """Glob patterns and paths -> sorted unique file paths.

    A plain path (no glob characters) that does not exist is kept only when
    `keep_missing` (tail mode waits for it).
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found: set[str] = set()
    for item in items:
        pattern = os.fspath(item)
        if glob.has_magic(pattern):
            found.update(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        elif os.path.isfile(pattern) or keep_missing:
            found.add(pattern)
    return sorted(found)


class _JsonlSourcePartition(StatefulSourcePartition[RawRecord, FilePosition]):
    """Reads one file from a byte offset; emits RawRecords; snapshot = position."""

    def __init__(
        self,
        path: str,
        resume: FilePosition | None,
        *,
        tail: bool,
        batch_size: int,
        poll_interval: timedelta,
    ) -> None:
        self._path = path
        self._offset = 0 if resume is None else int(resume["offset"])
        self._line = 0 if resume is None else int(resume["line"])
        self._tail = tail
        self._batch_size = batch_size
        self._poll = poll_interval
        self._f: Any = None
        self._awake: datetime | None = None
        self._pacer = EpochPacer()  # no spinning through the epoch-boundary wait

    def _open(self) -> bool:
        if self._f is None:
            try:
                self._f = open(self._path, "rb")  # noqa: SIM115 - closed in close()
            except FileNotFoundError:
                if not self._tail:
                    raise
                return False
        size = os.fstat(self._f.fileno()).st_size
        if size < self._offset:
            raise FileShrankError(
                f"{self._path} is {size} bytes, shorter than the resume offset {self._offset} "
                f"(line {self._line}): it was truncated or replaced; move it aside or start fresh"
            )
        self._f.seek(self._offset)
        return True

    def _record(self, raw_line: bytes, start: int) -> RawRecord:
        payload = raw_line[:-1] if raw_line.endswith(b"\n") else raw_line
        if payload.endswith(b"\r"):
            payload = payload[:-1]
        event_id = file_event_id(self._path, self._line)
        replayed = unwrap_replay_line(payload)
        if replayed is not None:  # a DLQ replay (streamforge dlq replay) keeps its event id
            payload, event_id = replayed
        return RawRecord(
            payload=payload,
            event_id=event_id,
            source=f"file:{self._path}",
            coords={"path": self._path, "line": self._line, "offset": start},
        )

    def next_batch(self) -> list[RawRecord]:
        self._pacer.polled()
        self._awake = None
        batch: list[RawRecord] = []
        if not self._open():
            self._awake = datetime.now(UTC) + self._poll
            return batch
        at_end = False
        while len(batch) < self._batch_size:
            raw_line = self._f.readline()
            if not raw_line or (self._tail and not raw_line.endswith(b"\n")):
                at_end = True  # end of file, or a half-written line in tail mode
                break
            start = self._offset
            self._offset += len(raw_line)
            self._line += 1
            if raw_line.strip():
                batch.append(self._record(raw_line, start))
        if at_end:
            if self._tail:
                self._awake = datetime.now(UTC) + self._poll
            elif not batch:
                raise StopIteration()
        return batch

    def next_awake(self) -> datetime | None:
        return self._pacer.next_awake(self._awake)

    def snapshot(self) -> FilePosition:
        self._pacer.advanced()
        return {"offset": self._offset, "line": self._line}

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


class JsonlSource(FixedPartitionedSource[RawRecord, FilePosition]):
    """JSON Lines files as RawRecords; one partition per file, resumable by offset.

    Emits a `RawRecord` per non-blank line; keeps `{"offset", "line"}` per
    file in the recovery state. See the module docstring for tail mode.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        tail: bool = False,
        batch_size: int = 1000,
        poll_interval: timedelta = timedelta(milliseconds=200),
    ) -> None:
        self._paths = paths
        self._tail = tail
        self._batch_size = batch_size
        self._poll = poll_interval

    def list_parts(self) -> list[str]:
        pin_thread_state()
        return expand_paths(self._paths, keep_missing=self._tail)

    def build_part(
        self, step_id: str, for_part: str, resume_state: FilePosition | None
    ) -> _JsonlSourcePartition:
        return _JsonlSourcePartition(
            for_part,
            resume_state,
            tail=self._tail,
            batch_size=self._batch_size,
            poll_interval=self._poll,
        )


class JsonlSinkPartition(StatefulSinkPartition[Any, int]):
    """Appends encoded lines to one file; snapshot = byte offset after fsync."""

    def __init__(self, path: Path, resume_offset: int | None, encode: Callable[[Any], bytes | str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a+b")  # noqa: SIM115 - closed in close()
        self._encode = encode
        # Drop whatever was written after the last durable snapshot (or
        # everything, on a fresh start): Bytewax replays those items.
        self.resume_at(resume_offset or 0)

    def resume_at(self, offset: int) -> None:
        """Truncate the file to `offset` (what follows is replayed)."""
        self._f.seek(offset)
        self._f.truncate()

    def write_batch(self, values: list[Any]) -> None:
        lines = []
        for v in values:
            line = self._encode(v)
            lines.append(line if isinstance(line, bytes) else line.encode("utf-8"))
        lines.append(b"")
        self._f.write(b"\n".join(lines))
        self._f.flush()
        os.fsync(self._f.fileno())

    def snapshot(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()


class JsonlSink(FixedPartitionedSink[Any, int]):
    """Write `(key, value)` items as one JSON line per value to a single file.

    Exactly-once on resume: truncates to the snapshot offset (see module
    docstring). Keeps the byte offset in the recovery state.
    """

    partition_class: type[JsonlSinkPartition] = JsonlSinkPartition

    def __init__(self, path: str | os.PathLike[str], *, encode: Callable[[Any], bytes | str] = dumps) -> None:
        self._path = Path(path)
        self._encode = encode

    @property
    def path(self) -> Path:
        return self._path

    def list_parts(self) -> list[str]:
        pin_thread_state()
        return [str(self._path)]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> JsonlSinkPartition:
        if for_part != str(self._path):
            raise ValueError(f"cannot resume writing {for_part!r} into a different file {self._path}")
        return self.partition_class(self._path, resume_state, self._encode)

