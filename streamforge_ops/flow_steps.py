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

__all__ = ["FlowUnavailable", "core_steps", "load_flow", "stateful_steps", "stateful_steps_of"]

BUILD_TIMEOUT_S = 120.0


class FlowUnavailable(CliError):
    """The flow could not be built for a reason other than its config (a service that
    did not answer, e.g. Kafka metadata): the supervisor's child crash-loops on it too."""


def load_flow(spec: str) -> Any:
    """Build the Dataflow `spec` exactly as the supervised child does (`streamforge_ops.child`):
    a config error prints one line and exits `EXIT_CONFIG`."""
    from streamforge_ops.child import load_flow as child_load_flow

    return child_load_flow(spec)


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
        from streamforge_ops.child import CONFIG_ERROR_PREFIX, EXIT_CONFIG

        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1].removeprefix(CONFIG_ERROR_PREFIX)
        error = CliError if done.returncode == EXIT_CONFIG else FlowUnavailable
        raise error(f"cannot build {flow_spec} to check the restored state against it: {last.strip()}")
    return list(json.loads(done.stdout))


def main(argv: list[str]) -> int:
    """Print the JSON list of stateful step ids of the flow `argv[0]` (`--inputs`: sources)."""
    print(json.dumps(stateful_steps_of(load_flow(argv[0]), inputs_only="--inputs" in argv[1:])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
