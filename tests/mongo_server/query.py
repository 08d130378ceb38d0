"""Document matching, ordering and update operators of the test MongoDB server.

Only what StreamForge's code and tests use: top-level and dotted field
filters with `$eq $ne $gt $gte $lt $lte $in $nin $exists`, `$and $or $nor`;
updates with `$set $unset $inc` or a replacement document; sort on fields.
Values compare in MongoDB's BSON type order (`sort_key`).
"""

from __future__ import annotations

import copy
import datetime
import math
import uuid
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp

__all__ = ["QueryError", "apply_update", "is_replacement", "matches", "sort_key", "upsert_seed"]


class QueryError(Exception):
    """A filter or update the server does not understand (reply code 2, BadValue)."""

    code = 2


def _type_rank(v: Any) -> int:
    if isinstance(v, MinKey):
        return 0
    if v is None:
        return 1
    if isinstance(v, bool):
        return 8
    if isinstance(v, (int, float, Int64, Decimal128)):
        return 2
    if isinstance(v, str):
        return 3
    if isinstance(v, Mapping):
        return 4
    if isinstance(v, (list, tuple)):
        return 5
    if isinstance(v, (bytes, Binary, uuid.UUID)):
        return 6
    if isinstance(v, ObjectId):
        return 7
    if isinstance(v, datetime.datetime):
        return 9
    if isinstance(v, Timestamp):
        return 10
    if isinstance(v, Regex):
        return 11
    if isinstance(v, MaxKey):
        return 13
    return 12


def _number_key(v: Any) -> tuple[int, Fraction]:
    """Exact numeric order across int32 / int64 / double / decimal128, as MongoDB compares them.

    MongoDB compares numbers by value, exactly (src/mongo/bson/bsonelement.cpp compareElements ->
    compareLongToDouble / compareDoubles; NaN sorts below every other number), so 2**60 and
    2**60 + 1 are different `_id`s; a float() key would make them collide.
    """
    if isinstance(v, Decimal128):
        d = v.to_decimal()
        if d.is_nan():
            return (0, Fraction(0))
        if d.is_infinite():
            return (1 if d < 0 else 3, Fraction(0))
        return (2, Fraction(d))
    if isinstance(v, float):
        if math.isnan(v):
            return (0, Fraction(0))
        if math.isinf(v):
            return (1 if v < 0 else 3, Fraction(0))
    return (2, Fraction(v))


def sort_key(v: Any) -> tuple[Any, ...]:
    """A Python sort key that orders values like MongoDB's BSON comparison.

    Types compare by their canonical type order first (MinKey < null < numbers <
    string < object < array < binData < ObjectId < bool < date < timestamp <
    regex < MaxKey; https://www.mongodb.com/docs/manual/reference/bson-type-comparison-order/),
    then by value within the type (numbers exactly, see `_number_key`).
    """
    rank = _type_rank(v)
    if rank == 2:
        return (rank, _number_key(v))
    if rank in (0, 1, 12, 13):
        return (rank, 0)
    if rank == 4:
        return (rank, tuple((k, sort_key(x)) for k, x in v.items()))
    if rank == 5:
        return (rank, tuple(sort_key(x) for x in v))
    if rank == 6:
        return (rank, bytes(v.bytes if isinstance(v, uuid.UUID) else v))
    if rank == 7:
        return (rank, v.binary)
    if rank == 9:
        dt = v if v.tzinfo else v.replace(tzinfo=datetime.UTC)
        return (rank, dt.timestamp())
    if rank == 10:
        return (rank, (v.time, v.inc))
    if rank == 11:
        return (rank, (v.pattern, v.flags))
    return (rank, v)


def _get(doc: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = doc
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return False, None
    return True, node


def _eq(a: Any, b: Any) -> bool:
    return sort_key(a) == sort_key(b)


def _cmp(present: bool, value: Any, op: str, arg: Any) -> bool:
    if op == "$exists":
        return present == bool(arg)
    if op == "$eq":
        return _eq(value, arg) if present else arg is None
    if op == "$ne":
        return not _cmp(present, value, "$eq", arg)
    if op == "$in":
        return any(_cmp(present, value, "$eq", a) for a in arg)
    if op == "$nin":
        return not _cmp(present, value, "$in", arg)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if not present or _type_rank(value) != _type_rank(arg):
            return False
        a, b = sort_key(value), sort_key(arg)
        return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]
    raise QueryError(f"unsupported query operator {op}")


def matches(doc: Mapping[str, Any], flt: Mapping[str, Any]) -> bool:
    """True if `doc` satisfies filter `flt`."""
    for key, cond in flt.items():
        if key == "$and":
            if not all(matches(doc, c) for c in cond):
                return False
        elif key == "$or":
            if not any(matches(doc, c) for c in cond):
                return False
        elif key == "$nor":
            if any(matches(doc, c) for c in cond):
                return False
        elif key.startswith("$"):
            raise QueryError(f"unsupported top-level operator {key}")
        else:
            present, value = _get(doc, key)
            if isinstance(cond, Mapping) and cond and all(k.startswith("$") for k in cond):
                if not all(_cmp(present, value, op, arg) for op, arg in cond.items()):
                    return False
            elif not _cmp(present, value, "$eq", cond):
                return False
    return True


def is_replacement(update: Any) -> bool:
    """True for a replacement document, False for an operator update."""
    if isinstance(update, list):
        raise QueryError("pipeline-style updates are not supported by the test server")
    keys = list(update)
    if keys and all(k.startswith("$") for k in keys):
        return False
    if any(k.startswith("$") for k in keys):
        raise QueryError("an update mixes operators and plain fields")
    return True


def _set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = doc
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise QueryError(f"cannot set {path}: {part} is not a document")
    node[parts[-1]] = value


def _unset_path(doc: dict[str, Any], path: str) -> None:
    parts = path.split(".")
    node: Any = doc
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def apply_update(doc: dict[str, Any], update: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Apply operator `update` to a copy of `doc`.

    Returns the new document, the updated fields and the removed fields
    (what a change event's `updateDescription` reports).
    """
    new = copy.deepcopy(doc)
    updated: dict[str, Any] = {}
    removed: list[str] = []
    for op, fields in update.items():
        for path, arg in fields.items():
            if path == "_id" or path.startswith("_id."):
                raise QueryError("Performing an update on the path '_id' would modify the immutable field '_id'")
            if op == "$set":
                _set_path(new, path, copy.deepcopy(arg))
                updated[path] = arg
            elif op == "$unset":
                _unset_path(new, path)
                removed.append(path)
            elif op == "$inc":
                present, old = _get(new, path)
                value = (old if present else 0) + arg
                _set_path(new, path, value)
                updated[path] = value
            else:
                raise QueryError(f"unsupported update operator {op}")
    return new, updated, removed


def upsert_seed(flt: Mapping[str, Any]) -> dict[str, Any]:
    """The document an upsert starts from: the filter's top-level equalities."""
    seed: dict[str, Any] = {}
    for key, cond in flt.items():
        if key.startswith("$") or "." in key:
            continue
        if isinstance(cond, Mapping) and cond and all(k.startswith("$") for k in cond):
            if "$eq" in cond:
                seed[key] = cond["$eq"]
            continue
        seed[key] = cond
    return seed
