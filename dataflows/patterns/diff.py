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

__all__ = ["changed_paths"]

_MISSING = object()


def changed_paths(before: Any, after: Any) -> tuple[str, ...]:
    """Sorted paths at which `before` and `after` differ (empty when equal)."""
    if before == after:
        return ()
    out: list[str] = []
    _walk(before, after, "", out)
    out.sort()
    return tuple(out)


def _child(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _walk(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k, va in a.items():
            vb = b.get(k, _MISSING)
            if vb is _MISSING:
                out.append(_child(path, k))
            elif va is not vb and va != vb:
                _walk(va, vb, _child(path, k), out)
        for k in b.keys() - a.keys():
            out.append(_child(path, k))
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        n = min(len(a), len(b))
        for i in range(n):
            if a[i] != b[i]:
                _walk(a[i], b[i], f"{path}[{i}]", out)
        for i in range(n, max(len(a), len(b))):
            out.append(f"{path}[{i}]")
    else:
        out.append(path)
