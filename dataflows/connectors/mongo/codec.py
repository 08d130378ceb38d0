"""How MongoDB documents become StreamForge values, keys and dead letters.

- `encode_key(_id)` / `decode_key(key)`: an `Event.key` is `str(_id)` for a
  string `_id` (the common case); any other `_id` (ObjectId, int, ...) and
  strings starting with `{` become canonical Extended JSON `{"_id": ...}`,
  so the sink can recover the exact `_id` (type included) from a tombstone.
- `check_document(raw)`: a document the pipeline cannot carry raises
  `UnsupportedDocument` with an `error_code`: `UNSUPPORTED_TYPE` for BSON
  types with no faithful JSON / ordering (regex, code, DBRef, MinKey, MaxKey,
  Timestamp, out-of-range dates) and `OVERSIZED` above the size limit.
- `token_time_ms(token)`: the cluster time in a resume token's `_data`
  (MongoDB encodes it first, as in `82{secs:08X}{inc:08X}...`).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping
from typing import Any

from bson import (
    Binary,
    Code,
    DatetimeMS,
    DBRef,
    Decimal128,
    Int64,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
    decode,
    json_util,
)
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument

from dataflows.dead_letter import ErrorCode

__all__ = [
    "DECODE_OPTIONS",
    "RAW_OPTIONS",
    "UnsupportedDocument",
    "check_document",
    "decode_key",
    "encode_key",
    "token_time_ms",
]

# Raw documents in; decode with tz-aware datetimes, out-of-range dates as DatetimeMS
# (flagged as unsupported instead of failing the whole batch).
RAW_OPTIONS: CodecOptions[RawBSONDocument] = CodecOptions(
    document_class=RawBSONDocument, tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO
)
DECODE_OPTIONS: CodecOptions[dict[str, Any]] = CodecOptions(
    tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO
)
_KEY_PREFIX = '{"_id": '
_SUPPORTED = (str, bool, int, float, Int64, Decimal128, ObjectId, Binary, bytes, uuid.UUID, datetime.datetime)
_UNSUPPORTED = (Regex, Code, DBRef, MinKey, MaxKey, Timestamp, DatetimeMS)


class UnsupportedDocument(ValueError):
    """A document the pipeline cannot carry; `error_code` says why."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


def encode_key(doc_id: Any) -> str:
    """The Event key of a document `_id` (reversible with `decode_key`)."""
    if isinstance(doc_id, str) and not doc_id.startswith("{"):
        return doc_id
    return json_util.dumps({"_id": doc_id}, json_options=json_util.CANONICAL_JSON_OPTIONS)


def decode_key(key: str) -> Any:
    """The `_id` an Event key stands for."""
    if key.startswith(_KEY_PREFIX):
        return json_util.loads(key, json_options=json_util.CANONICAL_JSON_OPTIONS)["_id"]
    return key


def _find_unsupported(value: Any, path: str) -> str | None:
    if value is None or isinstance(value, _SUPPORTED) and not isinstance(value, _UNSUPPORTED):
        return None
    if isinstance(value, Mapping):
        for k, v in value.items():
            found = _find_unsupported(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
        return None
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _find_unsupported(v, f"{path}.{i}")
            if found:
                return found
        return None
    return f"{path}: {type(value).__name__}"


def check_document(raw: RawBSONDocument, max_bytes: int) -> dict[str, Any]:
    """Decode `raw` into plain Python values, or raise `UnsupportedDocument`."""
    size = len(raw.raw)
    if max_bytes and size > max_bytes:
        raise UnsupportedDocument(
            ErrorCode.OVERSIZED, f"document is {size} bytes, above the limit of {max_bytes} bytes"
        )
    try:
        doc = decode(raw.raw, codec_options=DECODE_OPTIONS)
    except Exception as exc:  # noqa: BLE001 - corrupt BSON is a dead letter, not a crash
        raise UnsupportedDocument(ErrorCode.UNSUPPORTED_TYPE, f"undecodable BSON: {exc}") from exc
    found = _find_unsupported(doc, "")
    if found:
        raise UnsupportedDocument(ErrorCode.UNSUPPORTED_TYPE, f"unsupported BSON type at {found}")
    return doc


def token_time_ms(token: Mapping[str, Any] | None) -> int | None:
    """Cluster time (ms) encoded at the start of a resume token, if it has one."""
    data = token.get("_data") if token else None
    if not isinstance(data, str) or len(data) < 18 or not data.startswith("82"):
        return None
    try:
        return int(data[2:10], 16) * 1000
    except ValueError:
        return None
