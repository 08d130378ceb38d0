"""Fault kinds and the seeded draw of one run's fault schedule (pure logic).

A run's schedule is drawn from `random.Random(seed + run)` over the
invocation's workloads (`--workloads`; default `WORKLOADS`, the three
one-process workloads). Its first fault rotates through every kind that
applies to one of them (`run % len(kinds)`: with the default, 100 runs draw
each of the 17 kinds at least 5 times), its workload rotates through the
selected workloads that fault applies to (runs 0-2 cover all three); then
0-2 more faults of the kinds that apply to the workload, weighted by 1 / (the
number of selected workloads the kind applies to). Opt-in workloads
(`OPT_IN_WORKLOADS`: `cluster-exactly-once`, the orders pipeline on
`--processes 2`) and the kinds only they have (`process-kill`) are never
drawn unless selected, so the default draws are exactly those of the harness
before they existed. Each fault has `at` (when it strikes: once
the run's output has grown to that fraction of the fault-free run's output,
so that it lands while the run works, however loaded the machine) and
kind-specific parameters; `Schedule.to_json()` /
`Schedule.from_json()` round-trip it for `--replay-schedule`.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ALL_WORKLOADS", "CLUSTER", "FAULT_KINDS", "OPT_IN_WORKLOADS", "WORKLOADS", "Fault", "Schedule",
           "applicable_kinds", "draw_schedule", "parse_workloads"]

WORKLOADS = ("kafka-exactly-once", "kafka-at-least-once", "file")  # the default selection
CLUSTER = "cluster-exactly-once"  # kafka-exactly-once on `streamforge run --processes 2`
OPT_IN_WORKLOADS = (CLUSTER,)
ALL_WORKLOADS = (*WORKLOADS, *OPT_IN_WORKLOADS)
_ALL = ALL_WORKLOADS
_KAFKA = (*WORKLOADS[:2], CLUSTER)
_EXACTLY_ONCE_KAFKA = (WORKLOADS[0], CLUSTER)

# kind -> (workloads it applies to, what it does)
FAULT_KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "child-kill": (WORKLOADS, "SIGKILL the Bytewax child at a random moment"),
    "process-kill": ((CLUSTER,), "SIGKILL one process's Bytewax child (`process`: its index in "
                                 "`child_pids`) at a random moment"),
    "child-kill-checkpoint-copy": (_ALL, "SIGKILL the child while the supervisor copies a partition"),
    "child-kill-checkpoint-upload": (_ALL, "SIGKILL the child while the supervisor uploads a checkpoint"),
    "supervisor-kill": (_ALL, "SIGKILL the supervisor (its child dies with it); start it again"),
    "supervisor-kill-checkpoint-upload": (_ALL, "SIGKILL the supervisor in the middle of an upload"),
    "restore-swap-kill": (_ALL, "lose the node (supervisor killed, recovery dir gone), SIGKILL the "
                                     "restoring supervisor during the swap, start it again"),
    "restore-store-503": (_KAFKA, "lose the node, then restore while every object GET answers 503"),
    "kafka-commit-kill": (_EXACTLY_ONCE_KAFKA, "SIGKILL the child inside commit_transaction"),
    "broker-pause": (_KAFKA, "SIGSTOP the broker longer than the client timeouts, then SIGCONT"),
    "broker-restart": (_KAFKA, "restart the broker (controlled: SIGTERM; durable storage)"),
    "store-503": (_KAFKA, "the object store answers 503 SlowDown for a while"),
    "store-reset": (_KAFKA, "the object store resets connections for a while"),
    "store-slow": (_KAFKA, "the object store answers slowly for a while"),
    "long-restart": (_ALL, "SIGKILL the supervisor, start it again with the clock 2 h ahead "
                                "(longer than the dedup TTL and the session gap)"),
    "op-checkpoint": (_ALL, "`streamforge checkpoint create` while it runs"),
    "op-savepoint": (_ALL, "`streamforge savepoint create` while it runs"),
    "op-upgrade": (_ALL, "`streamforge upgrade --mode savepoint|last-state` while it runs"),
}


def applicable_kinds(workload: str) -> list[str]:
    return [k for k, (workloads, _) in FAULT_KINDS.items() if workload in workloads]


def parse_workloads(text: str) -> tuple[str, ...]:
    """`a,b,...` (`--workloads`) -> the workloads, in `ALL_WORKLOADS` order; ValueError naming
    an unknown one or an empty list."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_WORKLOADS]
    if unknown or not names:
        raise ValueError(f"--workloads: {', '.join(unknown) or repr(text)}: expected a comma-separated "
                         f"list of {', '.join(ALL_WORKLOADS)}")
    return tuple(w for w in ALL_WORKLOADS if w in names)


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float  # strikes when the output reaches this fraction of the fault-free output
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Schedule:
    seed: int
    run: int
    workload: str
    faults: tuple[Fault, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        d = json.loads(text)
        return cls(d["seed"], d["run"], d["workload"], tuple(Fault(**f) for f in d["faults"]))

    def kinds(self) -> list[str]:
        return [f.kind for f in self.faults]


def _params(kind: str, rng: random.Random) -> dict[str, Any]:
    """Kind-specific parameters of one fault."""
    if kind in ("child-kill-checkpoint-copy", "child-kill-checkpoint-upload",
                "supervisor-kill-checkpoint-upload", "kafka-commit-kill"):
        return {"nth": rng.randint(1, 8)}  # the N-th hit of the fault point
    if kind == "broker-pause":
        return {"for_s": round(rng.uniform(6.0, 9.0), 2)}  # > delivery/commit timeouts (5 s)
    if kind == "broker-restart":
        return {"down_s": round(rng.uniform(0.5, 3.0), 2)}
    if kind in ("store-503", "store-reset", "store-slow"):
        return {"for_s": round(rng.uniform(2.0, 6.0), 2), "probability": round(rng.uniform(0.3, 1.0), 2),
                **({"delay_s": round(rng.uniform(0.5, 3.0), 2)} if kind == "store-slow" else {})}
    if kind == "restore-store-503":
        return {"down_s": round(rng.uniform(0.0, 1.0), 2), "for_s": round(rng.uniform(6.0, 12.0), 2)}
    if kind in ("supervisor-kill", "long-restart", "restore-swap-kill"):
        return {"down_s": round(rng.uniform(0.0, 1.5), 2)}
    if kind == "op-upgrade":
        return {"mode": rng.choice(["savepoint", "last-state"])}
    if kind == "process-kill":
        return {"process": rng.randint(0, 1)}  # of the cluster workload's 2 processes
    return {}


def draw_schedule(seed: int, run: int, workloads: tuple[str, ...] = WORKLOADS) -> Schedule:
    """The schedule of run `run` of an invocation with `seed` over `workloads` (see the module
    docstring; for the default `WORKLOADS` the draw is the one before opt-in workloads existed)."""
    rng = random.Random(seed + run)

    def selected(kind: str) -> list[str]:
        return [w for w in FAULT_KINDS[kind][0] if w in workloads]

    kinds = [k for k in FAULT_KINDS if selected(k)]
    first = kinds[run % len(kinds)]
    choices = selected(first)
    workload = choices[(run + run // len(kinds)) % len(choices)]
    kinds = applicable_kinds(workload)
    weights = [1 / len(selected(k)) for k in kinds]  # kinds of fewer workloads: drawn more often
    chosen = [first, *rng.choices(kinds, weights, k=rng.randint(0, 2))]
    faults = sorted((Fault(k, round(rng.uniform(0.05, 0.7), 3), _params(k, rng)) for k in chosen),
                    key=lambda f: f.at)
    return Schedule(seed, run, workload, tuple(faults))
