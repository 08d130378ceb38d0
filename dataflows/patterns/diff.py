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
    _walk(before, after, "", out)
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
    """Append the paths at or under `path` where `a` and `b` (known to differ) differ."""
    ta = type(a)
    if (ta is dict or ta is list) and type(b) is ta:
        kind: type | None = ta  # the common case, without isinstance
    else:
        kind = _kind(a)
        if kind is not _kind(b):
            kind = None
    if kind is None:
        out.append(path)
    elif kind is dict:
        prefix = path + "." if path else ""
        matched = 0
        for k in a:  # plain method calls below: no bound-method objects per level
            va = a[k]
            vb = b.get(k, _MISSING)
            if vb is _MISSING:
                out.append(prefix + k if type(k) is str else f"{prefix}{k}")
                continue
            matched += 1
            if va is not vb and va != vb:
                tv = type(va)
                if tv in _SCALARS or type(vb) in _SCALARS:
                    out.append(prefix + k if type(k) is str else f"{prefix}{k}")
                else:
                    _walk(va, vb, prefix + k if type(k) is str else f"{prefix}{k}", out)
        if matched < len(b):
            out.extend(f"{prefix}{k}" for k in b if k not in a)
    else:
        n = min(len(a), len(b))
        for i in range(n):
            va, vb = a[i], b[i]
            if va is not vb and va != vb:
                if type(va) in _SCALARS or type(vb) in _SCALARS:
                    out.append(f"{path}[{i}]")
                else:
                    _walk(va, vb, f"{path}[{i}]", out)
        if n < len(a) or n < len(b):
            out.extend(f"{path}[{i}]" for i in range(n, max(len(a), len(b))))
