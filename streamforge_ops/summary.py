"""The summary `streamforge run` prints when a job ends.

The pipeline's own summary comes from
`dataflows.pipelines.summary.summarize(cfg)` / `format_summary(...)` (records
in, out, dead-lettered...). The supervisor adds what it did: what was
restored and why, checkpoints taken and failed, restarts, the savepoint taken
on cancel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dataflows.config import Config
from streamforge_ops.job import Job
from streamforge_ops.restoring import Decision

__all__ = ["Summary", "run_summary"]


@dataclass
class Summary:
    text: str
    data: dict[str, Any]


def _pipeline_summary(cfg: Config) -> tuple[str, Any]:
    from dataflows.pipelines.summary import format_summary, summarize

    try:
        result = summarize(cfg)
        text = format_summary(result)
    except Exception as exc:  # a summary must never turn a finished job into a failure
        return f"(pipeline summary unavailable: {type(exc).__name__}: {exc})", None
    data = result if isinstance(result, dict) else getattr(result, "__dict__", str(result))
    return text, data


def run_summary(job: Job, outcome: str, decision: Decision | None, tally: dict[str, Any]) -> Summary:
    """Text and JSON of the ended run."""
    pipe_text, pipe_data = _pipeline_summary(job.cfg)
    restored = decision.to_json() if decision else None
    data = {"pipeline": job.pipeline, "outcome": outcome, "restored": restored,
            "output": pipe_data, **tally}
    lines = [
        f"== {job.pipeline}: {outcome} ==",
        decision.describe() if decision else "restore: (not reached)",
        f"checkpoints: {tally['checkpoints']} taken, {tally['checkpoint_failures']} failed"
        + (f" (last {tally['last_checkpoint']})" if tally.get("last_checkpoint") else ""),
        f"restarts: {tally['restarts']}",
    ]
    if tally.get("savepoint"):
        lines.append(f"savepoint on cancel: {tally['savepoint']}")
    if tally.get("deleted_on_cancel"):
        lines.append(f"checkpoints deleted on cancel: {len(tally['deleted_on_cancel'])}")
    lines.append(pipe_text)
    return Summary("\n".join(lines), data)
