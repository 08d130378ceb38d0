"""TEMPORARY stand-in for dataflows.retry.RetryPolicy (same API); delete when it lands."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delays(self) -> Iterator[float]:
        d = self.initial_backoff_s
        for _ in range(self.max_attempts - 1):
            yield min(self.max_backoff_s, d) * (1 + self.jitter * (2 * random.random() - 1))
            d *= self.multiplier
