"""Fast positional construction and pickling of frozen, slotted dataclass records (events, pattern outputs).

A frozen dataclass's generated `__init__` sets each field through
`object.__setattr__`, which costs about twice a plain slot store; the
patterns build one record per emitted item, so they use `frozen_factory`
instead: it makes a function `(field values in declaration order) -> instance`
that stores the slots directly. The instances are ordinary, equal to (and
pickled like) those built by the class itself.

`tuple_pickled` makes such a class pickle as the class and a plain tuple of its
fields. The records a pattern emits cross Bytewax workers (on a cluster: processes),
and every crossing pickles them; a slotted dataclass otherwise pickles through
`dataclasses._dataclass_getstate`, which calls `fields()` for each object (and
`_dataclass_setstate` for each load). Pickles of that older form still load: the
class keeps its `__setstate__`.

    @tuple_pickled
    @dataclass(frozen=True, slots=True)
    class Point:
        x: int
        y: int
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, is_dataclass
from operator import attrgetter
from typing import Any, TypeVar

__all__ = ["frozen_factory", "tuple_pickled"]

T = TypeVar("T")


def frozen_factory(cls: type[T]) -> Callable[..., T]:
    """A positional constructor for the frozen, slotted dataclass `cls` (all fields required)."""
    if not is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} must be a slotted dataclass")
    names = [f.name for f in fields(cls)]
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for i, name in enumerate(names):
        env[f"_set{i}"] = cls.__dict__[name].__set__
    args = ", ".join(f"a{i}" for i in range(len(names)))
    stores = "".join(f"    _set{i}(o, a{i})\n" for i in range(len(names)))
    src = f"def make_{cls.__name__}({args}):\n    o = _new(_cls)\n{stores}    return o\n"
    exec(src, env)  # same technique as dataclasses' own generated __init__
    factory: Callable[..., T] = env[f"make_{cls.__name__}"]
    return factory


def tuple_pickled(cls: type[T]) -> type[T]:
    """Give the slotted dataclass `cls` (every field an `__init__` argument) a `__reduce__` to
    `(cls, field values)` (module doc)."""
    if not is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} must be a slotted dataclass")
    names = [f.name for f in fields(cls)]
    if len(names) < 2 or not all(f.init for f in fields(cls)):
        raise TypeError(f"{cls.__name__}: tuple_pickled needs two or more fields, all in __init__")
    values = attrgetter(*names)

    def __reduce__(self: Any) -> tuple[type[Any], tuple[Any, ...]]:
        return cls, values(self)

    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return cls
