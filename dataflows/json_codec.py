"""The one JSON encoding of every sink (file, Kafka, DLQ envelope): strict JSON, never a crash.

`dumps(obj)` -> UTF-8 bytes of RFC 8259 JSON that is also I-JSON (RFC 7493) as far
as the value allows, keys sorted, compact (orjson):

- a dataclass (Event, TableChange, Session, ...) -> its fields, recursively, plus
  `"type"` = the class name; a mapping -> an object (non-string keys as strings);
  tuples, lists, sets (sorted) -> arrays;
- bytes -> the UTF-8 text when they decode, else `{"base64": ...}`;
- anything else (datetime, Decimal, ObjectId ...) -> `str(value)`;
- never invalid JSON and never an exception for a value: NaN and +-Infinity are
  written as `null`; a string that is not valid Unicode (a lone surrogate) has
  each such code point replaced by U+FFFD; an integer beyond 64 bits is written
  as its decimal string. (Records that went through the parse step cannot hold
  any of these: it dead-letters them, see `dataflows/parse.py`.)

    >>> dumps({"b": 1, "a": [1.5, None]})
    b'{"a":[1.5,null],"b":1}'
"""

from __future__ import annotations

import base64
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import orjson

__all__ = ["dumps", "to_jsonable"]

_OPTIONS = (orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
            | orjson.OPT_PASSTHROUGH_DATETIME)
_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _bytes(value: bytes | bytearray) -> Any:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(bytes(value)).decode()}


def _dataclass_encoder(cls: type) -> Callable[[Any], dict[str, Any]]:
    """`obj -> {"type": <class name>, <field>: obj.<field>, ...}` for the dataclass `cls`, as one
    generated dict display (a dict built field by field cost a third of a sink's encoding;
    a field named `type` wins over the class name, as it did)."""
    items = "".join(f", {name!r}: o.{name}" for name in _field_names(cls))  # fields are identifiers
    env: dict[str, Any] = {}
    exec(f"def encode(o):\n    return {{'type': {cls.__name__!r}{items}}}\n", env)  # noqa: S102
    encode: Callable[[Any], dict[str, Any]] = env["encode"]
    return encode


_ENCODERS: dict[type, Callable[[Any], Any]] = {}  # exact type -> its one-level encoding


def _default(obj: Any) -> Any:
    """orjson's hook for what it does not encode itself: one level (it walks the rest)."""
    encode = _ENCODERS.get(type(obj))
    if encode is not None:
        return encode(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        encode = _ENCODERS[type(obj)] = _dataclass_encoder(type(obj))
        return encode(obj)
    if isinstance(obj, (bytes, bytearray)):
        return _bytes(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, Mapping):
        return dict(obj)
    return str(obj)


def to_jsonable(obj: Any) -> Any:
    """The JSON value `dumps` writes for `obj`, as Python objects (strict: see module docstring)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {"type": type(obj).__name__}
        for name in _field_names(type(obj)):
            out[name] = to_jsonable(getattr(obj, name))
        return out
    if isinstance(obj, str):
        return _valid_unicode(obj)
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int):
        return obj if -(2**63) <= obj < 2**64 else str(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (bytes, bytearray)):
        return _bytes(obj)
    if isinstance(obj, Mapping):
        return {_valid_unicode(str(k)): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return _valid_unicode(str(obj))


def _valid_unicode(s: str) -> str:
    """`s` with every lone surrogate replaced by U+FFFD."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in s)


def dumps(obj: Any) -> bytes:
    """`obj` as strict JSON bytes (see the module docstring)."""
    try:
        return orjson.dumps(obj, default=_default, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError):  # a lone surrogate, a >64-bit int, mixed keys ...
        return orjson.dumps(to_jsonable(obj), option=_OPTIONS)
