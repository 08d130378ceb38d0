"""JSONL file source and sinks: line handling, resume by offset, tail mode, exactly-once."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, run_main

from dataflows.connectors.dlq import JsonlDeadLetterSink, late_to_dead_letter, read_dead_letters
from dataflows.connectors.files import (
    FileShrankError,
    JsonlSink,
    JsonlSource,
    json_line,
    read_jsonl,
    to_jsonable,
)
from dataflows.dead_letter import ErrorCode, dead_letter
from dataflows.events import Event, RawRecord


def run_source(source: JsonlSource) -> list[RawRecord]:
    out: list[RawRecord] = []
    flow = Dataflow("src")
    op.output("out", op.input("in", flow, source), TestingSink(out))
    run_main(flow)
    return out


def test_source_handles_crlf_blank_lines_bad_bytes_and_a_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a":1}\r\n\n{"b":\xff}\n   \n{"c":3}')
    records = run_source(JsonlSource(str(path)))
    assert [r.payload for r in records] == [b'{"a":1}', b'{"b":\xff}', b'{"c":3}']
    assert [r.event_id for r in records] == [f"file:{path}:{n}" for n in (1, 3, 5)]
    assert [dict(r.coords) for r in records] == [
        {"path": str(path), "line": 1, "offset": 0},
        {"path": str(path), "line": 3, "offset": 10},
        {"path": str(path), "line": 5, "offset": 22},
    ]
    assert all(r.source == f"file:{path}" for r in records)


def test_source_has_one_partition_per_file_of_a_glob_or_list(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.jsonl").write_text(f'{{"f":"{name}1"}}\n{{"f":"{name}2"}}\n')
    (tmp_path / "skip.txt").write_text("x\n")
    src = JsonlSource([str(tmp_path / "[ab].jsonl"), str(tmp_path / "c.jsonl")])
    assert src.list_parts() == [str(tmp_path / f"{n}.jsonl") for n in "abc"]
    payloads = sorted(r.payload for r in run_source(src))
    assert payloads == sorted(f'{{"f":"{n}{i}"}}'.encode() for n in "abc" for i in (1, 2))


def test_source_partition_resumes_from_its_snapshot_offset(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [f'{{"n":{i}}}'.encode() for i in range(7)]
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    src = JsonlSource(str(path), batch_size=3)
    part = src.build_part("in", str(path), None)
    first = part.next_batch()
    state = part.snapshot()
    assert [r.payload for r in first] == lines[:3]
    assert state == {"offset": sum(len(x) + 2 for x in lines[:3]), "line": 3}
    part.close()

    resumed = src.build_part("in", str(path), state)
    rest: list[RawRecord] = []
    with pytest.raises(StopIteration):
        while True:
            rest.extend(resumed.next_batch())
    assert [r.payload for r in rest] == lines[3:]
    assert [r.coords["line"] for r in rest] == [4, 5, 6, 7]
    assert resumed.snapshot() == {"offset": path.stat().st_size, "line": 7}


def test_tail_partition_waits_for_the_file_and_for_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "later.jsonl"
    part = JsonlSource(str(path), tail=True, poll_interval=timedelta(milliseconds=50)).build_part(
        "in", str(path), None
    )
    assert part.next_batch() == [] and part.next_awake() is not None  # no file yet: poll
    path.write_bytes(b'{"n":1}\n{"n":2')
    assert [r.payload for r in part.next_batch()] == [b'{"n":1}']
    assert part.next_batch() == []  # half-written line is held back
    assert part.snapshot() == {"offset": 8, "line": 1}
    with path.open("ab") as f:
        f.write(b'2}\n{"n":3}\n')
    assert [r.payload for r in part.next_batch()] == [b'{"n":22}', b'{"n":3}']
    assert part.next_awake() is not None  # at end: poll again, never StopIteration


def test_a_file_shorter_than_the_resume_offset_is_an_error_not_silence(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"n":1}\n{"n":2}\n')
    part = JsonlSource(str(path), tail=True).build_part("in", str(path), {"offset": 16, "line": 2})
    assert part.next_batch() == []
    path.write_bytes(b'{"n":9}\n')  # truncated and rewritten
    with pytest.raises(FileShrankError, match="shorter than the resume offset 16"):
        part.next_batch()


class _Stop(Exception):
    pass


def _stop_at(marker: bytes) -> Any:
    def check(record: RawRecord) -> RawRecord:
        if record.payload == marker:
            raise _Stop()
        return record

    return check


def test_tail_flow_picks_up_appended_lines(tmp_path: Path) -> None:
    path = tmp_path / "tail.jsonl"
    path.write_bytes(b'{"n":0}\n')
    out: list[RawRecord] = []
    flow = Dataflow("tail")
    s = op.input("in", flow, JsonlSource(str(path), tail=True, poll_interval=timedelta(milliseconds=20)))
    op.output("out", op.map("stop", s, _stop_at(b"STOP")), TestingSink(out))
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_main(flow)
        except BaseException as exc:  # noqa: BLE001 - the STOP line ends the flow
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    for n in (1, 2, 3):
        with path.open("ab") as f:
            f.write(f'{{"n":{n}}}\n'.encode())
        while len(out) < n + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [r.payload for r in out] == [f'{{"n":{n}}}'.encode() for n in range(4)]
    with path.open("ab") as f:
        f.write(b"STOP\n")
    thread.join(timeout=20)
    assert not thread.is_alive() and errors  # ended by the STOP line, not by end of file


def test_sink_partition_truncates_to_the_snapshot_offset_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "out" / "o.jsonl"
    sink = JsonlSink(path)
    part = sink.build_part("out", str(path), None)
    part.write_batch([{"n": 1}, {"n": 2}])
    state = part.snapshot()
    part.write_batch([{"n": 3}])  # after the last snapshot: will be replayed
    part.close()
    assert len(read_jsonl(path)) == 3

    resumed = sink.build_part("out", str(path), state)
    resumed.write_batch([{"n": 3}, {"n": 4}])
    resumed.close()
    assert read_jsonl(path) == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
    fresh = sink.build_part("out", str(path), None)  # no resume state: start over
    fresh.close()
    assert path.read_bytes() == b""


class _CrashOnce:
    """Raises once when it sees line `at` (the flag file survives the 'restart')."""

    def __init__(self, flag: Path, at: int) -> None:
        self.flag, self.at = flag, at

    def __call__(self, item: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        if item[1]["line"] == self.at and not self.flag.exists():
            self.flag.write_text("crashed")
            raise _Stop(f"crash at line {self.at}")
        return item


def _causes(exc: BaseException | None) -> list[BaseException]:
    chain = []
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _line_of(record: RawRecord) -> tuple[str, dict[str, Any]]:
    return ("k", {"line": record.coords["line"], "payload": record.payload.decode()})


def _copy_flow(src: Path, dst: Path, crash: _CrashOnce) -> Dataflow:
    """in -> sink, and a parallel step that crashes once (after the sink got earlier lines)."""
    flow = Dataflow("copy")
    lines = op.map("line", op.input("in", flow, JsonlSource(str(src), batch_size=7)), _line_of)
    op.output("out", lines, JsonlSink(dst))
    op.inspect("crash", lines, lambda _step, item: crash(item))
    return flow


@pytest.mark.parametrize("epoch", [timedelta(0), timedelta(seconds=30)], ids=["epoch-per-batch", "one-epoch"])
def test_file_to_file_flow_is_exactly_once_across_a_crash(tmp_path: Path, epoch: timedelta) -> None:
    """epoch-per-batch: resume mid-file from the source and sink offsets;
    one-epoch: nothing was snapshotted, so the lines written before the crash are truncated."""
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(f'{{"n":{i}}}\n' for i in range(400)))
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    config = RecoveryConfig(recovery)
    crash = _CrashOnce(tmp_path / "flag", at=333)
    with pytest.raises(Exception) as info:
        run_main(_copy_flow(src, dst, crash), epoch_interval=epoch, recovery_config=config)
    assert any(isinstance(e, _Stop) for e in _causes(info.value))
    partial = read_jsonl(dst)
    assert 0 < len(partial) < 400  # written before the crash
    run_main(_copy_flow(src, dst, crash), epoch_interval=epoch, recovery_config=config)
    assert [d["line"] for d in read_jsonl(dst)] == list(range(1, 401))


def test_dlq_sink_round_trips_dead_letters_with_their_bytes(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    rec = RawRecord(b"\xff{oops", "file:x:1", "file:x", coords={"path": "x", "line": 1, "offset": 0})
    letters = [
        dead_letter(rec, code=ErrorCode.INVALID_UTF8, stage="p.parse", pipeline="p", message="bad"),
        dead_letter(Event("k", {"a": 1}, 5, "file:x:2", "file:x"), code=ErrorCode.USER_FUNCTION,
                    stage="p.enrich", pipeline="p", exc=ValueError("boom")),
    ]
    part = JsonlDeadLetterSink(path).build_part("dlq", str(path), None)
    part.write_batch(letters)
    part.close()
    assert list(read_dead_letters(path)) == letters
    assert list(read_dead_letters(tmp_path / "missing.jsonl")) == []
    with pytest.raises(TypeError):
        JsonlDeadLetterSink(path).build_part("dlq", str(path), None).write_batch([{"not": "a letter"}])


@dataclass(frozen=True)
class _Late:
    """Stand-in with the fields of dataflows.patterns.sessions.LateEvent."""

    event: Event
    reason: str
    watermark_ms: int


def test_late_event_becomes_a_late_event_dead_letter() -> None:
    e = Event("u1", {"page": "/a"}, 1_000, "file:c:9", "file:c")
    letter = late_to_dead_letter(_Late(e, "beyond allowed lateness", 400_000), "sessions", "sessions.sessions")
    assert letter.error_code == ErrorCode.LATE_EVENT and letter.stage == "sessions.sessions"
    assert letter.event_id == "file:c:9" and letter.key == b"u1"
    assert json.loads(letter.payload) == {"page": "/a"}
    assert letter.coords["watermark_ms"] == 400_000 and "399000 ms behind" in letter.error_message


def test_json_line_encodes_dataclasses_bytes_and_tuples() -> None:
    e = Event("k", {"x": (1, 2)}, 3, "id", "src", op="update", headers=(("h", b"\xff"), ("t", b"ok")))
    doc = json.loads(json_line(e))
    assert doc == {"type": "Event", "key": "k", "value": {"x": [1, 2]}, "event_time_ms": 3,
                   "event_id": "id", "source": "src", "op": "update",
                   "headers": [["h", {"base64": "/w=="}], ["t", "ok"]]}
    assert to_jsonable({"b": b"x", 1: {2}}) == {"b": "x", "1": [2]}
    assert json.loads(json_line({"b": b"x", 1: {2}})) == {"b": "x", "1": [2]}  # unsortable keys
    late = _Late(e, "r", 9)  # nested dataclasses: json_line is exactly to_jsonable
    assert json.loads(json_line(late)) == to_jsonable(late) and to_jsonable(late)["event"]["type"] == "Event"
