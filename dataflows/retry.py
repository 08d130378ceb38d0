"""Retry policy: exponential backoff with jitter and a cap (pure, reusable).

    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.1, max_backoff_s=5.0)
    result = policy.call(write, is_transient=lambda exc: isinstance(exc, TimeoutError))

`delays()` yields the waits between attempts (`max_attempts - 1` of them):
`initial * multiplier**n`, capped at `max_backoff_s`, then "full-range"
jitter: with `jitter=j` each delay is drawn uniformly from
`[d * (1 - j), d]` (j=0: no jitter, j=1: anywhere in `[0, d]`).

Config: every backoff in StreamForge is this one formula and one block of keys,
`<block>.max-attempts`, `<block>.initial-backoff`, `<block>.max-backoff` (durations
like `100ms`, `5s`), `<block>.multiplier`, `<block>.jitter` ->
`retry_policy_from_config(section, block=...)`: a sink's `retry`,
`checkpoints.retry`, a MongoDB source's `reconnect`, the supervisor's
`recovery.restart` (`streamforge_ops.scheduler.Backoff`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from dataflows.config import Config, ConfigError

T = TypeVar("T")

__all__ = ["RetryExhausted", "RetryPolicy", "retry_policy_from_config"]


class RetryExhausted(Exception):
    """Every attempt failed; `last` is the last exception, `attempts` the count."""

    def __init__(self, attempts: int, last: BaseException) -> None:
        super().__init__(f"gave up after {attempts} attempt(s): {last}")
        self.attempts = attempts
        self.last = last


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoffs must be >= 0")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    def backoff(self, retry: int) -> float:
        """The delay before retry number `retry` (0-based), jittered and capped."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**retry)
        return base * (1 - self.jitter * self.rng.random())

    def delays(self) -> Iterator[float]:
        """The waits between attempts: `max_attempts - 1` values."""
        for n in range(self.max_attempts - 1):
            yield self.backoff(n)

    def call(
        self,
        fn: Callable[[], T],
        is_transient: Callable[[BaseException], bool] = lambda exc: True,
        *,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> T:
        """Run `fn`, retrying transient failures; raise `RetryExhausted` at the end.

        A non-transient exception propagates at once, unchanged.
        `on_retry(attempt, exc, delay)` is called before each wait.
        """
        delays = self.delays()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below
                if not is_transient(exc):
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise RetryExhausted(attempt, exc) from exc
                if on_retry is not None:
                    on_retry(attempt, exc, delay)
                sleep(delay)


def retry_policy_from_config(cfg: Config, default: RetryPolicy | None = None, *, block: str = "retry") -> RetryPolicy:
    """Read the `<block>.*` keys of a section (missing keys keep `default`'s values)."""
    d = default or RetryPolicy()
    try:
        return RetryPolicy(
            max_attempts=cfg.int(f"{block}.max-attempts", d.max_attempts, minimum=1),
            initial_backoff_s=cfg.duration(f"{block}.initial-backoff", d.initial_backoff_s),
            max_backoff_s=cfg.duration(f"{block}.max-backoff", d.max_backoff_s),
            multiplier=cfg.float(f"{block}.multiplier", d.multiplier),
            jitter=cfg.float(f"{block}.jitter", d.jitter),
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{cfg.full_key(block)}: {exc} (in {cfg.origin})") from None
