"""Paths of the fields that differ between two JSON-like documents.

A path names a nested field with dots and list indexes: `address.city`,
`items[2].qty`. The root itself is the empty path `""` (when a whole value
is not a container, or changes type). Only the outermost differing path is
reported: a field that was added, removed or changed type is reported at its
own path, without listing its leaves; dicts and lists present on both sides
are compared element by element (lists by index; extra elements of the
longer list are reported as `items[3]`, ...).
"""

from __future__ import annotations

from typing import Any

__all__ = ["changed_paths", "differing_paths", "top_level_paths"]

_MISSING = object()
_SCALARS = frozenset({str, int, float, bool, type(None), bytes})


def changed_paths(before: Any, after: Any) -> tuple[str, ...]:
    """Sorted paths at which `before` and `after` differ (empty when equal)."""
    if before == after:
        return ()
    return differing_paths(before, after)


def top_level_paths(doc: Any) -> tuple[str, ...]:
    """`changed_paths({}, doc)`, fast: a dict's top-level fields (sorted), else the root."""
    if isinstance(doc, dict):
        return tuple(sorted(map(str, doc)))
    return ("",)


def differing_paths(before: Any, after: Any) -> tuple[str, ...]:
    """`changed_paths` for values already known to differ (skips the whole-value comparison)."""
    out: list[str] = []
    if type(before) is dict and type(after) is dict:  # a document: no kind dispatch at the root
        _walk_dict(before, after, "", out)
    else:
        _walk(before, after, "", out)
    if len(out) > 1:
        out.sort()
    return tuple(out)


def _kind(v: Any) -> type | None:
    """`dict` or `list` for containers compared element-wise (tuples count as lists), else None."""
    t = type(v)
    if t is dict or t is list:
        return t
    if isinstance(v, dict):
        return dict
    if isinstance(v, list | tuple):
        return list
    return None


def _walk(a: Any, b: Any, path: str, out: list[str]) -> None:
    """Append the paths at or under `path` where `a` and `b` (known to differ) differ: `path`
    itself unless both are containers of the same kind (`_kind`)."""
    kind = _kind(a)
    if kind is None or kind is not _kind(b):
        out.append(path)
    elif kind is dict:
        _walk_dict(a, b, path + "." if path else "", out)
    else:
        _walk_list(a, b, path, out)


def _walk_dict(a: Any, b: Any, prefix: str, out: list[str]) -> None:
    """`_walk` of two mappings; `prefix` is their path plus "." ("" at the root).

    Plain dicts and lists recurse directly (the common case: no `_kind` call);
    any other pair with a scalar side is reported at its path, the rest goes
    through `_walk`.
    """
    matched = 0
    for k, va in a.items():
        vb = b.get(k, _MISSING)
        if vb is _MISSING:
            out.append(prefix + k if type(k) is str else f"{prefix}{k}")
            continue
        matched += 1
        if va is vb or not va != vb:
            continue
        name = prefix + k if type(k) is str else f"{prefix}{k}"
        ta = type(va)
        if ta is dict and type(vb) is dict:
            _walk_dict(va, vb, name + "." if name else "", out)  # an "" key has no dot
        elif ta is list and type(vb) is list:
            _walk_list(va, vb, name, out)
        elif ta in _SCALARS or type(vb) in _SCALARS:
            out.append(name)
        else:
            _walk(va, vb, name, out)
    if matched < len(b):
        out.extend(f"{prefix}{k}" for k in b if k not in a)


def _walk_list(a: Any, b: Any, path: str, out: list[str]) -> None:
    """`_walk` of two sequences at `path`: by index, then the extra elements of the longer one."""
    na, nb = len(a), len(b)
    n = na if na < nb else nb
    for i in range(n):
        va, vb = a[i], b[i]
        if va is vb or not va != vb:
            continue
        ta = type(va)
        if ta is dict and type(vb) is dict:
            _walk_dict(va, vb, f"{path}[{i}].", out)
        elif ta in _SCALARS or type(vb) in _SCALARS:
            out.append(f"{path}[{i}]")
        else:
            _walk(va, vb, f"{path}[{i}]", out)
    if n < na or n < nb:
        out.extend(f"{path}[{i}]" for i in range(n, na if na > nb else nb))
