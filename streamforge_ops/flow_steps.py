"""The stateful steps of a pipeline's flow, found from the built Dataflow object (never run).

A step keeps state in the recovery partitions when it is a `stateful_batch`
core operator (every `stateful_map`, `stateful`, window, join ... runs through
one), an `input` of a `FixedPartitionedSource` or an `output` of a
`FixedPartitionedSink`; its state rows carry exactly that core operator's
step id (`orders.dedup.stateful_batch`, `orders.source`).

The flow is built in a subprocess (`python -m streamforge_ops.flow_steps FLOW`,
config from `$STREAMFORGE_CONFIG`): a command that also reads or writes the
partitions must not load Bytewax's own SQLite next to Python's (README:
two SQLite copies in one process break each other's locks).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamforge_ops.cli import CliError

__all__ = ["core_steps", "load_flow", "stateful_steps", "stateful_steps_of"]

BUILD_TIMEOUT_S = 120.0


def load_flow(spec: str) -> Any:
    """Import `module:attr` (an attribute or a call, as `bytewax.run` accepts) -> the Dataflow."""
    from bytewax.run import _locate_dataflow

    module, _, attr = spec.partition(":")
    return _locate_dataflow(module, attr or "flow")


def core_steps(flow: Any) -> Iterator[Any]:
    """Every core operator of `flow` (depth first)."""
    stack = list(reversed(flow.substeps))
    while stack:
        step = stack.pop()
        if step.substeps:
            stack.extend(reversed(step.substeps))
        else:
            yield step


def stateful_steps_of(flow: Any, *, inputs_only: bool = False) -> list[str]:
    """Step ids of the core operators of `flow` that snapshot state (see module doc);
    `inputs_only`: only the stateful sources."""
    from bytewax.inputs import FixedPartitionedSource
    from bytewax.outputs import FixedPartitionedSink

    ids = []
    for step in core_steps(flow):
        kind = step.step_id.rsplit(".", 1)[-1]
        if isinstance(getattr(step, "source", None), FixedPartitionedSource):
            ids.append(step.step_id)
        elif inputs_only:
            continue
        elif kind == "stateful_batch" and type(step).__name__ == "stateful_batch":
            ids.append(step.step_id)
        elif isinstance(getattr(step, "sink", None), FixedPartitionedSink):
            ids.append(step.step_id)
    return sorted(ids)


def stateful_steps(flow_spec: str, config_path: Path, *, inputs_only: bool = False) -> list[str]:
    """`stateful_steps_of` the flow `flow_spec` built with `config_path`, in a subprocess."""
    from streamforge_ops.child import child_env

    try:
        done = subprocess.run(
            [sys.executable, "-m", "streamforge_ops.flow_steps", flow_spec,
             *(["--inputs"] if inputs_only else [])],
            env=child_env(config_path), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CliError(f"building {flow_spec} to list its stateful steps took over "
                       f"{BUILD_TIMEOUT_S:.0f}s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CliError(f"cannot build {flow_spec} to check the restored state against it: {last}")
    return list(json.loads(done.stdout))


def main(argv: list[str]) -> int:
    """Print the JSON list of stateful step ids of the flow `argv[0]` (`--inputs`: sources)."""
    print(json.dumps(stateful_steps_of(load_flow(argv[0]), inputs_only="--inputs" in argv[1:])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
