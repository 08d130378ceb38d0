"""StatefulMerger: turn a stream of full documents per key into changes.

Keyed by `Event.key`. Each Event carries the whole current document in
`value` (CDC insert/update/replace with the full document, or a snapshot);
the merger compares it with the previous document of the key:

- first sight -> `Change(kind="created", before=None)`;
- a different document -> `"updated"`, with the paths that differ;
- an equal document (no-op update, replayed snapshot) -> nothing;
- `op == "delete"` of a known key -> `"deleted"` (`after=None`) and the
  key's state is discarded (`state_evictions`, reason `delete`); a delete of
  an unknown key emits nothing (there is no `before` to report);
- `op == "generation"` markers are ignored (the pipeline routes them
  around this step).

`changed` lists the differing paths (see `diff.changed_paths`): for
`created` / `deleted`, the top-level fields of the document.

State per key (`MergerState`): the previous document, kept by reference:
event values must not be mutated once they are in a stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dataflows.events import Event
from dataflows.patterns.diff import differing_paths, top_level_paths
from dataflows.records import frozen_factory, tuple_pickled

__all__ = ["Change", "MergerState", "StatefulMerger"]

_EMPTY: tuple[()] = ()


@tuple_pickled
@dataclass(frozen=True, slots=True)
class Change:
    """One change of a key's document."""

    kind: str  # 'created' | 'updated' | 'deleted'
    key: str
    before: Any  # None for created
    after: Any  # None for deleted
    changed: tuple[str, ...]  # sorted paths like "address.city", "items[2].qty"
    event_id: str  # f"{source event id}/{step_id}"
    event_time_ms: int


@dataclass(frozen=True, slots=True)
class MergerState:
    """Snapshot of one key: its previous document."""

    value: Any
    version: int = 1


_change = frozen_factory(Change)


class StatefulMerger:
    """The merge state machine of one key (a Bytewax `StatefulLogic` by shape)."""

    STATE_VERSION = 1
    __slots__ = ("suffix", "value", "known", "on_delete")

    def __init__(self, step_id: str, state: MergerState | None = None,
                 on_delete: Callable[[], None] | None = None) -> None:
        self.suffix = "/" + step_id  # derived ids: f"{parent}/{step}" (events.derive_id)
        self.on_delete = on_delete
        self.known = state is not None
        self.value: Any = None if state is None else state.value

    def on_item(self, event: Event) -> tuple[tuple[Change, ...], bool]:
        opn = event.op
        prev = self.value
        if opn == "delete":
            if not self.known:
                return _EMPTY, True
            if self.on_delete is not None:
                self.on_delete()
            return (_change("deleted", event.key, prev, None, top_level_paths(prev),
                            event.event_id + self.suffix, event.event_time_ms),), True
        if opn == "generation":
            return _EMPTY, not self.known
        new = event.value
        if not self.known:
            self.known = True
            self.value = new
            return (_change("created", event.key, None, new, top_level_paths(new),
                            event.event_id + self.suffix, event.event_time_ms),), False
        if new == prev:
            return _EMPTY, False
        self.value = new
        return (_change("updated", event.key, prev, new, differing_paths(prev, new),
                        event.event_id + self.suffix, event.event_time_ms),), False

    def on_batch(self, events: list[Event]) -> tuple[list[Change], bool]:
        """`on_item` over a batch: the changes in order; discard when the key ends deleted."""
        out: list[Change] = []
        for event in events:
            change = self.apply(event)
            if change is not None:
                out.append(change)
        return out, not self.known

    def apply(self, event: Event) -> Change | None:
        """One event: its Change (None: no change); a delete forgets the document."""
        opn = event.op
        prev = self.value
        if opn is not None:
            if opn == "delete":
                if not self.known:
                    return None
                if self.on_delete is not None:
                    self.on_delete()
                self.known = False
                self.value = None
                return _change("deleted", event.key, prev, None, top_level_paths(prev),
                               event.event_id + self.suffix, event.event_time_ms)
            if opn == "generation":
                return None
        new = event.value
        if not self.known:
            self.known = True
            self.value = new
            return _change("created", event.key, None, new, top_level_paths(new),
                           event.event_id + self.suffix, event.event_time_ms)
        if new == prev:
            return None
        self.value = new
        return _change("updated", event.key, prev, new, differing_paths(prev, new),
                       event.event_id + self.suffix, event.event_time_ms)

    def on_notify(self) -> tuple[tuple[()], bool]:
        return _EMPTY, not self.known

    def on_eof(self) -> tuple[tuple[()], bool]:
        return _EMPTY, not self.known

    def notify_at(self) -> None:
        return None

    def snapshot(self) -> MergerState:
        return MergerState(self.value, self.STATE_VERSION)


def __getattr__(name: str) -> Any:
    """`merge_changes`, the Bytewax operator, lives in `dataflows.flow` (imported on use)."""
    if name == "merge_changes":
        from dataflows.flow import merge_changes

        return merge_changes
    raise AttributeError(name)
