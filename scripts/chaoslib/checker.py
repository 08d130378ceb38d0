"""The chaos checker: a run's output and DLQ against the fault-free run of the same input.

Pure logic. An output record is `Record(event_id, body)`: `event_id` is the
record's identity (Kafka: the `sf-event-id` header; file sink: the table
change's `event_id`), `body` a canonical text of everything the record holds
(partition, key, value). Per identity, let B be the fault-free run's bodies
and R the run's (multisets); M = B - R (missing), X = R - B (extra):

- divergent: min(|M|, |X|): the identity was written with a different body
  (a different decision on replay, a different partition);
- lost: |M| - divergent;
- duplicated: |X| - divergent (extra copies; with `exactly_once=False` copies
  of a body the fault-free run wrote are allowed, and counted in
  `redelivered` instead).

Dead letters are compared by (error code, stage, event id, payload): every
fault-free dead letter must be there (a missing one counts as lost) and no
other (an unexpected one counts as divergent, e.g. a record diverted to the
DLQ by a transaction's state). `exact_dlq=False` (a Kafka DLQ, written
at-least-once by design) ignores extra copies of an expected dead letter.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Record", "Verdict", "check"]


@dataclass(frozen=True)
class Record:
    event_id: str
    body: str


@dataclass
class Verdict:
    lost: int = 0
    duplicated: int = 0
    divergent: int = 0
    redelivered: int = 0
    dlq_missing: int = 0
    dlq_unexpected: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.divergent)

    def what(self) -> str:
        parts = [f"{n} {name}" for name, n in (("lost", self.lost), ("duplicated", self.duplicated),
                                                ("divergent", self.divergent)) if n]
        dlq = [f"{n} {name}" for name, n in (("missing", self.dlq_missing),
                                             ("unexpected", self.dlq_unexpected)) if n]
        text = ", ".join(parts) + (f" (dlq: {', '.join(dlq)})" if dlq else "")
        return text + ("; e.g. " + " | ".join(self.examples[:3]) if self.examples else "")


def _by_id(records: Iterable[Record]) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for r in records:
        out[r.event_id][r.body] += 1
    return out


def check(
    baseline: Iterable[Record],
    got: Iterable[Record],
    *,
    exactly_once: bool = True,
    baseline_dlq: Iterable[str] = (),
    got_dlq: Iterable[str] = (),
    exact_dlq: bool = True,
) -> Verdict:
    """Compare a run with the fault-free run (see the module docstring)."""
    v = Verdict()
    want, have = _by_id(baseline), _by_id(got)
    for eid in sorted(set(want) | set(have)):
        b, r = want.get(eid, Counter()), have.get(eid, Counter())
        if not exactly_once:
            copies = sum(n - b[body] for body, n in r.items() if body in b and n > b[body])
            v.redelivered += copies
            r = Counter({body: min(n, b[body]) if body in b else n for body, n in r.items()})
        missing, extra = sum((b - r).values()), sum((r - b).values())
        div = min(missing, extra)
        v.divergent += div
        v.lost += missing - div
        v.duplicated += extra - div
        if missing or extra:
            v.examples.append(f"{eid}: want {sorted(b.elements())[:2]} got {sorted(r.elements())[:2]}")
    bd, gd = Counter(baseline_dlq), Counter(got_dlq)
    if not exact_dlq:
        gd = Counter({k: min(n, bd[k]) if k in bd else n for k, n in gd.items()})
    v.dlq_missing, v.dlq_unexpected = sum((bd - gd).values()), sum((gd - bd).values())
    v.lost += v.dlq_missing
    v.divergent += v.dlq_unexpected
    if v.dlq_missing or v.dlq_unexpected:
        v.examples.append(f"dlq missing {sorted((bd - gd).elements())[:1]} "
                          f"unexpected {sorted((gd - bd).elements())[:1]}")
    return v
