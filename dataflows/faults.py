"""Fault points: named places where a test harness may kill the process with SIGKILL.

    from dataflows.faults import fault_point
    fault_point("checkpoint.upload")   # a no-op unless armed

Armed by the environment variable `STREAMFORGE_FAULT_POINT`, read once at
import: a comma-separated list of `name[@N][=action]`:

- `name`: the point (see `POINTS`);
- `@N`: fire at the N-th hit of that point in this process (default 1);
- `=action`: `kill` (default: SIGKILL this process) or `kill-children`
  (SIGKILL every direct child of this process, e.g. the supervisor's Bytewax
  child while the supervisor is in the middle of a checkpoint copy, and go on).

When `STREAMFORGE_FAULT_MARK` names a file, a line `name pid` is appended to
it (and fsynced) just before the point fires, so a harness can tell a fault
that fired from one whose point was never reached; and a point already in
that file does not fire again (once per mark file, across restarts of the
process, so an armed point does not turn into a crash loop).

Unarmed (the variable unset, i.e. every production run), `fault_point` costs
one lookup in an empty dict. The chaos harness (scripts/chaos.py) arms them.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "children", "fault_point", "fired", "parse_spec"]

ENV = "STREAMFORGE_FAULT_POINT"
MARK_ENV = "STREAMFORGE_FAULT_MARK"
ACTIONS = ("kill", "kill-children")

# The points the code calls, where (module), and which process runs them.
POINTS = {
    "checkpoint.copy": "recovery/checkpoint.py, after a partition is copied (supervisor)",
    "checkpoint.upload": "recovery/checkpoint.py, after an object is uploaded, before the manifest (supervisor)",
    "checkpoint.cache": "recovery/checkpoint.py, after a cached copy is brought forward by a published live delta (supervisor)",
    "restore.swap": "recovery/swap.py: after the stage is fsynced (1st hit), after the journal commit (2nd), after each partition file moved in (supervisor)",
    "kafka.commit": "dataflows/connectors/kafka/transactional.py, just before commit_transaction (child)",
}


def parse_spec(spec: str) -> dict[str, tuple[int, str]]:
    """`"a@2=kill-children,b"` -> `{"a": (2, "kill-children"), "b": (1, "kill")}`."""
    armed: dict[str, tuple[int, str]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        head, _, action = item.partition("=")
        name, _, nth = head.partition("@")
        action = action or "kill"
        if action not in ACTIONS:
            raise ValueError(f"{ENV}: action {action!r} of {item!r}: expected one of {', '.join(ACTIONS)}")
        armed[name] = (int(nth) if nth else 1, action)
    return armed


_ARMED: dict[str, tuple[int, str]] = parse_spec(os.environ.get(ENV, ""))
_HITS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Fire the fault armed for `name`, if any (see the module docstring)."""
    armed = _ARMED.get(name)
    if armed is not None:
        _hit(name, *armed)


def _hit(name: str, nth: int, action: str) -> None:
    hits = _HITS[name] = _HITS.get(name, 0) + 1
    if hits != nth:
        return
    mark = os.environ.get(MARK_ENV)
    if mark:
        if name in fired(mark):
            return
        with open(mark, "a") as f:
            f.write(f"{name} {os.getpid()}\n")
            f.flush()
            os.fsync(f.fileno())
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    for pid in children(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def fired(mark: str) -> list[str]:
    """The points recorded in the mark file `mark` (in firing order)."""
    try:
        with open(mark) as f:
            return [line.split()[0] for line in f if line.strip()]
    except FileNotFoundError:
        return []


def children(parent: int) -> list[int]:
    """Direct children of `parent`, from /proc (Linux)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == parent:
            out.append(int(entry))
    return out
