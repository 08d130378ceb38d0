"""DLQ inspection and replay (the logic behind `streamforge dlq`).

A DLQ is a Kafka topic (value = `DeadLetter.to_json()`, see
dataflows/connectors/kafka/dlq.py) or a JSONL file of the same envelopes.

- `summarize(letters, flt)`: counts by error code and stage, samples.
- `replay(letters, ...)`: re-produce each matching dead letter's ORIGINAL key
  and payload bytes (and its original headers) to `--to` or the topic of its
  coordinates (same partition when it goes back to that topic), with header
  `sf-event-id` = its event id and `sf-replay` = the replay tag; rate-limited;
  `dry_run` only counts. The Kafka source gives a record carrying `sf-replay`
  the event id of its `sf-event-id` header, so a Deduplicator keyed on event
  ids makes a second replay of the same letters harmless. `FileTarget`
  appends envelope lines to a JSONL file a file source reads; that source
  gives them their original event id (dataflows/connectors/files/replay_lines.py).
- `plan_from_config(cfg)`: `dlq replay --config PIPELINE.yaml`: the DLQ is
  the pipeline's `dlq` section, the target its input (the source topics, or
  the one JSONL file of a file source); its exactly-once output topics are
  refused as targets (`refuse_output_topic`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from dataflows.config import Config
from dataflows.connectors.files.replay_lines import replay_line
from dataflows.connectors.kafka.common import EVENT_ID_HEADER, REPLAY_HEADER, take_available
from dataflows.dead_letter import DeadLetter

_QUIET = logging.getLogger("streamforge.dlq.librdkafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

__all__ = [
    "DlqFilter",
    "FileTarget",
    "KafkaTarget",
    "RateLimiter",
    "ReplayReport",
    "parse_time_ms",
    "plan_from_config",
    "read_dlq_file",
    "read_dlq_topic",
    "refuse_output_topic",
    "replay",
    "replay_record",
    "summarize",
]


def parse_time_ms(text: str) -> int:
    """ISO-8601 (naive = UTC) or epoch milliseconds -> epoch milliseconds."""
    if text.strip().isdigit():
        return int(text)
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


@dataclass(frozen=True)
class DlqFilter:
    """Which dead letters to take: codes, stages, failure time range (last failure)."""

    error_codes: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.error_codes and letter.error_code not in self.error_codes:
            return False
        if self.stages and letter.stage not in self.stages:
            return False
        t = letter.last_failure_ms or letter.first_failure_ms
        if self.since_ms is not None and t < self.since_ms:
            return False
        return not (self.until_ms is not None and t >= self.until_ms)


def read_dlq_file(path: str) -> Iterator[DeadLetter]:
    from dataflows.connectors.dlq import read_dead_letters

    yield from read_dead_letters(path)


class KafkaUnreachable(ConnectionError):
    """The DLQ's (or the target's) brokers did not answer: one line for the CLI."""


def _consumer(brokers: str, **conf: Any) -> Consumer:
    """A consumer of the DLQ tool; librdkafka's own connection logs go to a silent logger
    (an unreachable broker becomes one `KafkaUnreachable`, not a page of log lines)."""
    return Consumer({"bootstrap.servers": brokers, "group.id": "streamforge-dlq-tool",
                     "enable.auto.commit": False, **conf}, logger=_QUIET)


def _metadata(consumer: Consumer, brokers: str, timeout_s: float, topic: str | None = None) -> Any:
    try:
        return consumer.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        err = exc.args[0]
        text = err.str() if isinstance(err, KafkaError) else str(err)
        raise KafkaUnreachable(f"Kafka brokers {brokers} did not answer within {timeout_s:g}s: {text}") from None


def read_dlq_topic(brokers: str, topic: str, *, timeout_s: float = 30.0) -> Iterator[DeadLetter]:
    """Every dead letter of a DLQ topic (all partitions, start to end, read_committed);
    `KafkaUnreachable` if the brokers do not answer within `timeout_s`."""
    consumer = _consumer(brokers, **{
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })
    try:
        md = _metadata(consumer, brokers, timeout_s)
        if topic not in md.topics:
            raise LookupError(f"DLQ topic {topic!r} does not exist on {brokers}")
        parts = list(md.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(parts):
            msgs = take_available(consumer, 500, 0.2)
            if not msgs and time.monotonic() > deadline:
                raise TimeoutError(f"reading DLQ topic {topic!r}: no end after {timeout_s:g}s")
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done.add(m.partition() or 0)
                        continue
                    raise RuntimeError(f"reading DLQ topic {topic!r}: {err}")
                deadline = time.monotonic() + timeout_s
                value = m.value()
                if value is None:  # a tombstone: nothing to inspect or replay
                    continue
                try:
                    yield DeadLetter.from_json(value)
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{topic}[{m.partition()}]@{m.offset()} is not a dead letter: {exc}") from None
    finally:
        consumer.close()


def _sample(letter: DeadLetter, max_payload: int = 200) -> dict[str, Any]:
    payload = letter.payload[:max_payload].decode("utf-8", "backslashreplace")
    return {
        "event_id": letter.event_id,
        "error_code": letter.error_code,
        "stage": letter.stage,
        "message": letter.error_message,
        "coords": dict(letter.coords),
        "key": None if letter.key is None else letter.key.decode("utf-8", "backslashreplace"),
        "payload": payload + ("..." if len(letter.payload) > max_payload else ""),
        "attempts": letter.attempts,
        "last_failure_ms": letter.last_failure_ms,
    }


def summarize(letters: Iterable[DeadLetter], flt: DlqFilter, *, samples: int = 3) -> dict[str, Any]:
    """Counts by error code, stage and pipeline, and up to `samples` letters per code."""
    by_code: Counter[str] = Counter()
    by_stage: Counter[str] = Counter()
    by_pipeline: Counter[str] = Counter()
    picked: dict[str, list[dict[str, Any]]] = {}
    total = matched = 0
    for letter in letters:
        total += 1
        if not flt.matches(letter):
            continue
        matched += 1
        by_code[letter.error_code] += 1
        by_stage[letter.stage] += 1
        by_pipeline[letter.pipeline] += 1
        bucket = picked.setdefault(letter.error_code, [])
        if len(bucket) < samples:
            bucket.append(_sample(letter))
    return {
        "total": total,
        "matched": matched,
        "by_error_code": dict(by_code.most_common()),
        "by_stage": dict(by_stage.most_common()),
        "by_pipeline": dict(by_pipeline.most_common()),
        "samples": picked,
    }


class RateLimiter:
    """At most `rate` calls of `wait()` per second (None: unlimited)."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self._clock, self._sleep = rate, clock, sleep
        self._next = clock()

    def wait(self) -> None:
        if not self.rate:
            return
        now = self._clock()
        if self._next > now:
            self._sleep(self._next - now)
        self._next = max(self._next, now) + 1.0 / self.rate


def replay_record(letter: DeadLetter, to: str | None, tag: str) -> dict[str, Any] | None:
    """The produce() arguments replaying `letter`; None if it names no topic."""
    original = letter.coords.get("topic")
    topic = to or original
    if not topic:
        return None
    headers = [(k, v) for k, v in letter.headers if k not in (EVENT_ID_HEADER, REPLAY_HEADER)]
    headers += [(EVENT_ID_HEADER, letter.event_id.encode()), (REPLAY_HEADER, tag.encode())]
    record: dict[str, Any] = {"topic": topic, "key": letter.key, "value": letter.payload, "headers": headers}
    partition = letter.coords.get("partition")
    if topic == original and isinstance(partition, int):
        record["partition"] = partition
    return record


@dataclass
class ReplayReport:
    total: int = 0
    matched: int = 0
    replayed: int = 0
    no_topic: int = 0
    failed: int = 0
    dry_run: bool = False
    tag: str = ""
    by_topic: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("by_topic", "errors")}
        return {**d, "by_topic": dict(self.by_topic), "errors": self.errors[:10]}


class KafkaTarget:
    """Replays to Kafka: to `to`, else each letter's original topic.

    `inputs` (from `--config`: the pipeline's source topics): a letter whose
    original topic is not one of them goes to the first. The producer is
    created on the first send (a dry run never connects).
    """

    def __init__(self, brokers: str | None, to: str | None = None, *, inputs: Sequence[str] = (),
                 producer: Any = None) -> None:
        self.brokers, self.to, self.inputs, self._producer = brokers, to, tuple(inputs), producer
        self._report: ReplayReport | None = None

    def _to(self, letter: DeadLetter) -> str | None:
        if self.to or not self.inputs:
            return self.to
        original = letter.coords.get("topic")
        return original if original in self.inputs else self.inputs[0]

    def name(self, letter: DeadLetter) -> str | None:
        record = replay_record(letter, self._to(letter), "")
        return None if record is None else str(record["topic"])

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        assert self._report is not None
        if err is not None:
            self._report.failed += 1
            self._report.errors.append(f"{msg.topic()}: {err.str()}")
        else:
            self._report.replayed += 1
            self._report.by_topic[msg.topic()] += 1

    def send(self, letter: DeadLetter, tag: str, report: ReplayReport) -> None:
        if self._producer is None:
            if not self.brokers:
                raise ValueError("brokers are needed to replay (or use a dry run)")
            self._producer = Producer({"bootstrap.servers": self.brokers, "enable.idempotence": True})
        self._report = report
        record = replay_record(letter, self._to(letter), tag)
        assert record is not None
        while True:
            try:
                self._producer.produce(on_delivery=self._on_delivery, **record)
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(60)


class FileTarget:
    """Replays into a JSONL file a file source reads: one envelope line per letter
    (dataflows/connectors/files/replay_lines.py: the source gives it the original event id),
    appended, flushed and fsynced at the end."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f: Any = None

    def name(self, letter: DeadLetter) -> str:
        return self.path

    def send(self, letter: DeadLetter, tag: str, report: ReplayReport) -> None:
        if self._f is None:
            self._f = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        self._f.write(replay_line(letter.payload, letter.event_id, tag))
        self._f.flush()  # whole lines only: a tailing source never sees half of one
        report.replayed += 1
        report.by_topic[self.path] += 1

    def close(self) -> None:
        if self._f is not None:
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None


ReplayTarget = KafkaTarget | FileTarget


def replay(
    letters: Iterable[DeadLetter],
    *,
    target: ReplayTarget,
    flt: DlqFilter,
    rate: float | None = None,
    dry_run: bool = False,
    tag: str | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> ReplayReport:
    """Replay the matching dead letters to `target` (see module docstring)."""
    report = ReplayReport(dry_run=dry_run, tag=tag or str(int(time.time() * 1000)))
    limiter = RateLimiter(None if dry_run else rate)
    try:
        for letter in letters:
            report.total += 1
            if not flt.matches(letter):
                continue
            report.matched += 1
            name = target.name(letter)
            if name is None:
                report.no_topic += 1
                continue
            progress(1)
            if dry_run:
                report.by_topic[name] += 1
                continue
            limiter.wait()
            target.send(letter, report.tag, report)
    finally:
        target.close()
    return report


def refuse_output_topic(brokers: str, topic: str, *, exactly_once: Sequence[str] = (),
                        timeout_s: float = 10.0, peek: int = 5) -> None:
    """Raise LookupError if `topic` is a pipeline's output (a replay must go through an input).

    Refused: a topic named as an exactly-once output (`exactly_once`, from
    `--config`), and any topic whose newest records carry `sf-event-id`
    without `sf-replay`, i.e. written by a StreamForge sink: the
    TransactionalWriter skips by that id after a restart, so foreign records
    in its output are lost or duplicated (issue 9, path 6). `peek=0` skips the
    header check (`--allow-output-topic`), never the exactly-once one.
    """
    why = "the pipeline's exactly-once output" if topic in exactly_once else None
    if why is None and peek > 0 and _written_by_a_sink(brokers, topic, timeout_s, peek):
        why = "written by a StreamForge sink (its records carry sf-event-id)"
    if why is not None:
        raise LookupError(
            f"refusing to replay into {topic!r}: it is {why}. Replay goes through the pipeline's "
            "input: use --config PIPELINE.yaml (the input topic or file), or --to an input topic"
        )


def _written_by_a_sink(brokers: str, topic: str, timeout_s: float, peek: int) -> bool:
    consumer = _consumer(brokers, **{"isolation.level": "read_committed"})
    try:
        md = _metadata(consumer, brokers, timeout_s, topic)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None:
            return False  # a topic that does not exist yet holds nothing
        wanted: list[TopicPartition] = []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                wanted.append(TopicPartition(topic, p, max(low, high - peek)))
        if not wanted:
            return False
        consumer.assign(wanted)
        deadline, seen = time.monotonic() + timeout_s, 0
        while seen < peek * len(wanted) and time.monotonic() < deadline:
            for m in take_available(consumer, 100, 0.2):
                if m.error() is not None:
                    continue
                seen += 1
                headers = m.headers() or []
                names = {h[0] for h in headers}
                if EVENT_ID_HEADER in names and REPLAY_HEADER not in names:
                    return True
        return False
    finally:
        consumer.close()


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


def letters_source(brokers: str | None, topic: str | None, file: str | None, *,
                   timeout_s: float = 30.0) -> Iterable[DeadLetter]:
    if file:
        return read_dlq_file(file)
    assert brokers and topic
    return read_dlq_topic(brokers, topic, timeout_s=timeout_s)


def as_set(values: Sequence[str] | None) -> frozenset[str]:
    return frozenset(v for item in values or () for v in item.split(",") if v)


@dataclass
class PipelinePlan:
    """What `dlq replay --config` reads and where it writes."""

    letters: Iterable[DeadLetter]
    target: ReplayTarget
    dlq: str
    exactly_once_outputs: list[str] = field(default_factory=list)
    brokers: str | None = None


def _brokers(section: Config) -> str:
    raw = section.raw("brokers")
    return raw if isinstance(raw, str) else ",".join(str(b) for b in raw)


def dlq_from_config(cfg: Config, *, timeout_s: float = 30.0) -> tuple[Iterable[DeadLetter], str]:
    """The dead letters of a pipeline config's `dlq` section, and where they are."""
    dlq = cfg.section("dlq")
    if dlq.str("type", "file") == "kafka":
        dlq_topic = dlq.str("topic")
        return read_dlq_topic(_brokers(dlq), dlq_topic, timeout_s=timeout_s), f"kafka topic {dlq_topic}"
    from dataflows.connectors.dlq import default_dlq_path

    path = dlq.str("path", default_dlq_path(cfg.str("pipeline.name")))
    return (read_dlq_file(path) if os.path.exists(path) else iter(())), f"file {path}"


def plan_from_config(cfg: Config, *, timeout_s: float = 30.0) -> PipelinePlan:
    """The DLQ and replay target of a pipeline config (ValueError naming the key if impossible)."""
    source, sink = cfg.section("source"), cfg.section("sink")
    letters, where = dlq_from_config(cfg, timeout_s=timeout_s)
    kind = source.str("type", "file")
    brokers = None
    if kind == "kafka":
        brokers = _brokers(source)
        topics = source.raw("topics", None) or [source.str("topic")]
        target: ReplayTarget = KafkaTarget(brokers, inputs=[str(t) for t in topics])
    elif kind == "file":
        path = source.raw("path", None)
        if not isinstance(path, str) or any(c in path for c in "*?["):
            raise ValueError(f"source.path: {path!r} is not one file; give the file to append the "
                             "replay to with --to-file (one the source reads)")
        target = FileTarget(path)
    else:
        raise ValueError(f"source.type: {kind!r}: a {kind} source cannot be written to; replay to "
                         "a topic or file the pipeline reads (--file/--topic with --to or --to-file)")
    eo: list[str] = []
    if sink.str("type", "file") == "kafka" and sink.str("mode", "at-least-once") == "exactly-once":
        eo = [sink.str(k) for k in ("topic", "changes-topic") if sink.has(k)]
    return PipelinePlan(letters, target, where, eo, brokers)
