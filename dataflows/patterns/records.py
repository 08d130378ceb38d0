"""Fast positional construction of the patterns' frozen output records.

A frozen dataclass's generated `__init__` sets each field through
`object.__setattr__`, which costs about twice a plain slot store; the
patterns build one record per emitted item, so they use `frozen_factory`
instead: it makes a function `(field values in declaration order) -> instance`
that stores the slots directly. The instances are ordinary, equal to (and
pickled like) those built by the class itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

__all__ = ["frozen_factory"]

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
