"""Deterministic sample data for the orders and sessions pipelines.

The bundled files were made with:

    streamforge generate orders   --out data/orders.jsonl --count 5000 --seed 7
    streamforge generate sessions --out data/clicks.jsonl --count 5000 --seed 7

Same arguments, same bytes. Besides valid events the output holds, on purpose:

- duplicates: exact copies of a recent valid line (a redelivery; same
  `event_id`), a few lines after the original;
- out-of-order events: clicks written 5 s - 2 min or 15 - 28 min of stream
  time after their own time (within the sessions pipeline's allowed lateness,
  30m; some after their session closed, so they update it: revision 1);
  orders with an older `ts`;
- too-late events (sessions): written 1.5-4 hours of stream time after their
  own time, beyond the allowed lateness;
- malformed lines, one kind after the other: bad JSON, invalid UTF-8, missing
  key, wrong types, and (rarely) an oversized record of `oversized_bytes`.

Orders lines: `{"event_id", "order_id", "op": insert|update|delete, "ts"
(ISO-8601), "status", "amount", "customer", "items", "version"}`.
Click lines: `{"event_id", "user_id", "ts", "action": view|click|purchase,
"page", "amount"?}`.
"""

from __future__ import annotations

import heapq
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["GENERATORS", "Generated", "generate_clicks", "generate_orders", "iso_ms", "write_dataset"]

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
STATUSES = ("created", "paid", "packed", "shipped", "delivered")
MALFORMED_KINDS = ("bad_json", "invalid_utf8", "missing_key", "wrong_type")


def iso_ms(ms: int) -> str:
    """Epoch ms -> `2026-01-01T00:00:00.000Z`."""
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class Generated:
    """What a generator wrote: the lines and how many of each kind."""

    lines: list[bytes] = field(default_factory=list)
    line_kinds: list[str] = field(default_factory=list)

    def add(self, line: bytes, kind: str) -> None:
        self.lines.append(line)
        self.line_kinds.append(kind)

    def cut(self, count: int) -> Generated:
        del self.lines[count:], self.line_kinds[count:]
        return self

    @property
    def kinds(self) -> Counter[str]:
        return Counter(self.line_kinds)


class _Anomalies:
    """Decides, line by line, whether to write a duplicate or a malformed line."""

    def __init__(self, rng: random.Random, key_field: str, oversized_bytes: int) -> None:
        self.rng = rng
        self.key_field = key_field
        self.oversized_bytes = oversized_bytes
        self.recent: list[bytes] = []
        self.malformed = 0

    def remember(self, line: bytes) -> None:
        self.recent = (self.recent + [line])[-20:]

    def maybe(self, out: Generated, doc: dict[str, Any]) -> None:
        """Possibly append a duplicate or a malformed line derived from `doc`."""
        r = self.rng.random()
        if r < 0.05 and self.recent:
            out.add(self.rng.choice(self.recent), "duplicate")
        elif r < 0.08:
            out.add(*self._malformed(doc))

    def _malformed(self, doc: dict[str, Any]) -> tuple[bytes, str]:
        self.malformed += 1
        if self.malformed % 40 == 0:
            bad = dict(doc, note="x" * self.oversized_bytes)
            return _dump(bad), "oversized"
        kind = MALFORMED_KINDS[self.malformed % len(MALFORMED_KINDS)]
        good = _dump(doc)
        if kind == "bad_json":
            return good[: self.rng.randrange(1, len(good) - 1)], kind
        if kind == "invalid_utf8":
            return good.replace(b'"ts"', b'"t\xff\xfes"', 1), kind
        if kind == "missing_key":
            return _dump({k: v for k, v in doc.items() if k != self.key_field}), kind
        wrong: dict[str, Any] = self.rng.choice(
            [{self.key_field: [doc[self.key_field]]}, {"ts": True}, {"event_id": 12345}]
        )
        return _dump(dict(doc, **wrong)), kind


def generate_orders(count: int, seed: int, *, oversized_bytes: int = 20_000) -> Generated:
    """`count` order lines: inserts, updates, deletes and the anomalies above."""
    rng = random.Random(seed)
    out = Generated()
    anomalies = _Anomalies(rng, "order_id", oversized_bytes)
    active: dict[str, dict[str, Any]] = {}
    t, n_orders, n_events = BASE_MS, 0, 0
    while len(out.lines) < count:
        t += rng.randrange(200, 2000)
        n_events += 1
        if not active or (len(active) < 200 and rng.random() < 0.35):
            n_orders += 1
            oid = f"o-{n_orders:05d}"
            state: dict[str, Any] = {"order_id": oid, "status": "created", "customer": f"c-{rng.randrange(300):03d}",
                     "amount": round(rng.uniform(5, 500), 2), "items": rng.randrange(1, 9), "version": 1}
            active[oid] = state
            op = "insert"
        else:
            oid = rng.choice(sorted(active))
            state = active[oid]
            idx = STATUSES.index(state["status"])
            state["version"] += 1
            if idx == len(STATUSES) - 1 or rng.random() < 0.03:
                op = "delete"
                del active[oid]
            else:
                op = "update"
                state["status"] = STATUSES[idx + 1]
                if rng.random() < 0.3:
                    state["amount"] = round(state["amount"] * rng.uniform(0.8, 1.2), 2)
        ts = t - rng.randrange(1_000, 120_000) if rng.random() < 0.05 else t
        doc = {"event_id": f"oe-{n_events:06d}", "op": op, "ts": iso_ms(ts), **state}
        line = _dump(doc)
        out.add(line, "out_of_order" if ts != t else "valid")
        anomalies.remember(line)
        anomalies.maybe(out, doc)
    return out.cut(count)


def generate_clicks(count: int, seed: int, *, oversized_bytes: int = 20_000) -> Generated:
    """`count` click lines from interleaved user sessions, with the anomalies above."""
    rng = random.Random(seed)
    out = Generated()
    anomalies = _Anomalies(rng, "user_id", oversized_bytes)
    users = max(5, count // 50)
    clock = [(BASE_MS + rng.randrange(0, 600_000), u, rng.randrange(3, 16)) for u in range(users)]
    heapq.heapify(clock)
    held: list[tuple[int, int, bytes, str]] = []  # (release time, seq, line, kind)
    n = 0
    while len(out.lines) < count and clock:
        t, user, left = heapq.heappop(clock)
        while held and held[0][0] <= t:
            _, _, line, kind = heapq.heappop(held)
            out.add(line, kind)
        n += 1
        action = rng.choices(("view", "click", "purchase"), (70, 25, 5))[0]
        doc: dict[str, Any] = {"event_id": f"ce-{n:06d}", "user_id": f"u-{user:04d}",
                               "ts": iso_ms(t), "action": action, "page": f"/p/{rng.randrange(50)}"}
        if action == "purchase":
            doc["amount"] = round(rng.uniform(1, 200), 2)
        line = _dump(doc)
        r = rng.random()
        if r < 0.05:
            delay = rng.randrange(5_000, 120_000) if rng.random() < 0.5 else rng.randrange(900_000, 1_680_000)
            heapq.heappush(held, (t + delay, n, line, "out_of_order"))
        elif r < 0.06:
            heapq.heappush(held, (t + rng.randrange(5_400_000, 14_400_000), n, line, "too_late"))
        else:
            out.add(line, "valid")
            anomalies.remember(line)
            anomalies.maybe(out, doc)
        if left > 1:
            nxt = (t + rng.randrange(5_000, 90_000), user, left - 1)
        else:
            nxt = (t + rng.randrange(720_000, 3_600_000), user, rng.randrange(3, 16))
        heapq.heappush(clock, nxt)
    for _, _, line, kind in sorted(held):
        out.add(line, kind)
    return out.cut(count)


GENERATORS: dict[str, Callable[..., Generated]] = {"orders": generate_orders, "sessions": generate_clicks}


def write_dataset(
    kind: str,
    out: str | os.PathLike[str],
    *,
    count: int,
    seed: int,
    oversized_bytes: int = 20_000,
    progress: Callable[[Iterator[bytes]], Iterator[bytes]] | None = None,
) -> dict[str, Any]:
    """Generate `kind` ('orders' | 'sessions') into `out`; returns a summary dict."""
    gen = GENERATORS[kind](count, seed, oversized_bytes=oversized_bytes)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines: Iterator[bytes] = iter(gen.lines)
    if progress is not None:
        lines = progress(lines)
    with path.open("wb") as f:
        for line in lines:
            f.write(line + b"\n")
    return {"kind": kind, "path": str(path), "count": len(gen.lines), "seed": seed,
            "bytes": path.stat().st_size, "lines_by_kind": dict(sorted(gen.kinds.items()))}
