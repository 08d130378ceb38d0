"""How the state commands print: a table for people, `--json` for machines.

Progress of long operations goes to stderr, results to stdout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["emit", "listing", "manifest_full", "manifest_row", "progress", "table"]

_ROW_FIELDS = ("id", "kind", "name", "created_at", "code_version", "partition_count", "total_bytes", "base_id",
               "parent_id")


def manifest_row(m: Any) -> dict[str, Any]:
    """The listing fields of a recovery.manifest.Manifest."""
    return {f: getattr(m, f, None) for f in _ROW_FIELDS}


def manifest_full(m: Any) -> dict[str, Any]:
    """Everything a manifest says (for describe)."""
    if hasattr(m, "to_json"):
        data = m.to_json()
        return json.loads(data) if isinstance(data, (str, bytes)) else dict(data)
    return dict(vars(m))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "") if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*columns), *(fmt.format(*row) for row in cells)])


def emit(data: Any, *, as_json: bool, text: str | None = None) -> None:
    """Print `data` as JSON, or `text` (default: str(data))."""
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(text if text is not None else str(data))


def progress(msg: str) -> None:
    print(f"streamforge: {msg}", file=sys.stderr, flush=True)


def listing(manifests: Iterable[Any], *, as_json: bool) -> None:
    rows = [manifest_row(m) for m in manifests]
    emit(rows, as_json=as_json, text=table(rows, ("id", "name", "created_at", "code_version", "partition_count", "total_bytes")))
