"""A Bytewax process of a cluster: `python -m streamforge_ops.cluster_child ARGS` is
`python -m bytewax.run ARGS` that keeps the worker's own error when the run fails.

Why: in cluster mode Bytewax 0.21.1 loses it. `cluster_main` (src/run.rs) puts a worker's
PyErr into a channel from its panic hook, then dropping the communication guards panics
("Send thread panic") and that PanicException replaces it: the failing process and its peers
all print only the panic. Every error of a Python call Bytewax makes is re-raised as a
`bytewax.errors.BytewaxRuntimeError` (naming the call, step and partition) whose `__cause__`
is the user's exception (src/errors.rs `reraise`; the class is looked up in `bytewax.errors`
at its first use), so this module swaps that class for a subclass that keeps its instances.
When the run fails, the first one:

- becomes the `__cause__` of what the run raised, so the traceback shows it and
  `streamforge_ops.child`'s hook finds a `ConfigError` in the chain (exit 2) as it does on
  one process;
- gives the process's first error line (`Type: message`, then the Bytewax context), written
  to the file `$STREAMFORGE_ERROR_FILE` as ``worker<TAB>line``; without one (a peer's
  panic) the line of what the run raised is written as ``exit<TAB>line``. The supervisor's
  `cluster.ChildGroup` reads it to log which process failed and why.
"""

from __future__ import annotations

import os
import re
import runpy
import sys
from pathlib import Path

import bytewax.errors

__all__ = ["ERROR_FILE_ENV", "error_line", "main"]

ERROR_FILE_ENV = "STREAMFORGE_ERROR_FILE"
_KEPT: list[BaseException] = []
_KEEP = 8  # the first few are enough; a failing run raises few


class BytewaxRuntimeError(bytewax.errors.BytewaxRuntimeError):
    """Bytewax's error, remembering its instances (module doc; same name in tracebacks)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        if len(_KEPT) < _KEEP:
            _KEPT.append(self)


def _root(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


_WHERE_RE = re.compile(r"^\(\S+:\d+:\d+\): ")  # reraise's "(src/inputs.rs:402:46): " prefix


def error_line(exc: BaseException) -> str:
    """One line: the innermost cause's `Type: message`, then (if `exc` wraps it, as Bytewax's
    error does) what was being called, in parentheses."""
    root = _root(exc)
    line = _first_line(root)
    context = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if root is not exc and context:
        line += f" ({_WHERE_RE.sub('', context)})"
    return line


def _write(kind: str, line: str) -> None:
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        try:
            Path(path).write_text(f"{kind}\t{line}\n")
        except OSError:
            pass  # the supervisor then says less; the traceback still shows the error


def main(argv: list[str]) -> None:
    """Run `bytewax.run` with `argv` as its arguments (module doc)."""
    bytewax.errors.BytewaxRuntimeError = BytewaxRuntimeError  # type: ignore[misc]
    sys.argv = ["bytewax.run", *argv]
    try:
        runpy.run_module("bytewax.run", run_name="__main__", alter_sys=True)
    except (SystemExit, KeyboardInterrupt):
        raise  # a config error's exit 2, a stop: already said, not a failure to explain
    except BaseException as exc:
        first = _KEPT[0] if _KEPT else None
        if first is not None and first is not exc and exc.__cause__ is None:
            exc.__cause__ = first
        _write("worker" if first is not None else "exit", error_line(first or exc))
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
