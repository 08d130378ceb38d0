"""The JSONL line a DLQ replay appends to a file source's input, keeping the event id.

A Kafka replay carries the original event id in headers (`sf-event-id` with
`sf-replay`); a JSONL line has no headers, so `streamforge dlq replay` into a
file writes an envelope line instead:

    {"sf-replay": "TAG", "sf-event-id": "file:data/orders.jsonl:7", "payload": "<original line>"}

(`"payload-base64"` instead of `"payload"` when the original bytes are not
UTF-8). `JsonlSource` unwraps it (`unwrap_replay_line`): the record gets the
original payload bytes and the original event id, so the pipeline sees what it
saw the first time and a Deduplicator drops a second replay of it. A line is
an envelope only if it starts with `{"sf-replay":` exactly; any other line is
data, untouched (and costs one `startswith`).
"""

from __future__ import annotations

import base64
import json

__all__ = ["REPLAY_PREFIX", "replay_line", "unwrap_replay_line"]

REPLAY_PREFIX = b'{"sf-replay":'


def replay_line(payload: bytes, event_id: str, tag: str) -> bytes:
    """The envelope line (with its newline) replaying `payload` as event `event_id`."""
    body: dict[str, str] = {"sf-replay": tag, "sf-event-id": event_id}
    try:
        body["payload"] = payload.decode("utf-8")  # JSON escapes any line break in it
    except UnicodeDecodeError:
        body["payload-base64"] = base64.b64encode(payload).decode()
    line = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    assert line.encode().startswith(REPLAY_PREFIX)
    return line.encode() + b"\n"


def unwrap_replay_line(line: bytes) -> tuple[bytes, str] | None:
    """(original payload, original event id) of an envelope line, else None."""
    if not line.startswith(REPLAY_PREFIX):
        return None
    try:
        body = json.loads(line)
        event_id = body["sf-event-id"]
        if "payload-base64" in body:
            return base64.b64decode(body["payload-base64"], validate=True), str(event_id)
        return str(body["payload"]).encode("utf-8"), str(event_id)
    except (ValueError, KeyError, TypeError):
        return None  # not a well-formed envelope: the line is data (parse decides)
