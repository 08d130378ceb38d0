"""One CPython thread state per Bytewax worker thread, kept for the thread's life.

Bytewax runs a worker on a Rust thread whenever the dataflow runs as a cluster: several
processes (`-a host0:port;host1:port`, `streamforge run --processes N`) or several workers
in a process (`-w N`). Only a single worker on a single process runs on the main thread
(`run_main` in Bytewax's `src/run.rs`). A worker thread enters Python through PyO3's
`Python::with_gil`, i.e. `PyGILState_Ensure` / `PyGILState_Release` around every call
into Python (every `next_batch`, `on_batch`, `write_batch`, snapshot, ...). On a thread
Python did not create, `PyGILState_Release` deletes the thread state when its counter drops
to 0 (CPython 3.11 `Python/pystate.c`, `PyGILState_Release`), and the next call creates a
new one: a fresh frame data stack each time (`_PyThreadState_BumpFramePointerSlow` ->
`_PyObject_VirtualAlloc`, an `mmap`, and an `munmap` when it is freed), with the page faults
and, in a process with several threads, the TLB shootdowns that go with it. Measured on
Bytewax's own flow (`bench/scale.py`'s `baseline_flow`, 200,000 orders, one process): 53 to
60 us of CPU per event through `cluster_main` against 31 to 36 through `run_main`, and 32 to
35 through `cluster_main` once the worker thread keeps its thread state.

`pin_thread_state()` takes one more `PyGILState_Ensure` on the calling thread and never
releases it: the counter then stays above 0, PyO3's later `with_gil` calls find and reuse
the same thread state (they still take and release the GIL as before), and thread-locals
survive between calls. StreamForge's sources and sinks call it from `list_parts` / `build`,
which Bytewax calls on every worker thread while it builds the dataflow. The thread state
is freed with the interpreter at exit.

    from dataflows.flow.threads import pin_thread_state

    class MySource(FixedPartitionedSource):
        def list_parts(self):
            pin_thread_state()
            return ["0"]
"""

from __future__ import annotations

import ctypes
import threading

# Per thread state (a thread-local lives in the thread state), so a new thread that reuses an
# old one's ident is pinned too.
_local = threading.local()


def pin_thread_state() -> bool:
    """Keep this thread's Python thread state alive for the thread's life; True if it was
    pinned now, False if it already was, or if this is the main thread (whose thread state
    Python keeps anyway). Call it with the GIL held (any Python code does)."""
    if getattr(_local, "pinned", False) or threading.current_thread() is threading.main_thread():
        return False
    ctypes.pythonapi.PyGILState_Ensure()  # +1 on this thread's gilstate counter, never released
    _local.pinned = True
    return True
