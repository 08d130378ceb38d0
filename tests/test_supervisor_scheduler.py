"""Pure timing logic of the supervisor (streamforge_ops.scheduler): no processes, fake clocks."""

from __future__ import annotations

from streamforge_ops.scheduler import RestartBudget


def test_restart_budget_counts_only_the_window() -> None:
    """max-restarts 2 per 10 s window: a third restart inside the window is refused; once the
    first one left the window, restarts are allowed again (a lifetime count never would)."""
    budget = RestartBudget(limit=2, window=10.0)
    assert budget.allow(0.0) and budget.allow(5.0)
    assert not budget.allow(9.0)
    assert budget.allow(10.5)      # the restart at 0.0 left the window
    assert not budget.allow(14.0)  # 5.0 and 10.5 are inside it
    assert budget.allow(100.0)


def test_restart_budget_zero_is_unlimited() -> None:
    budget = RestartBudget(limit=0, window=1.0)
    assert all(budget.allow(float(i) / 1000) for i in range(100))
