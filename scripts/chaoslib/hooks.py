"""A `patterns.enrich` hook for the chaos workloads: slows each event down.

`throttle` sleeps `$STREAMFORGE_CHAOS_THROTTLE_MS` per event, so a run of a few
thousand records lasts long enough for its faults to land while it works.
"""

from __future__ import annotations

import os
import time
from typing import Any

_DELAY_S = float(os.environ.get("STREAMFORGE_CHAOS_THROTTLE_MS", "0")) / 1000


def throttle(event: Any) -> Any:
    """Return `event` unchanged, `$STREAMFORGE_CHAOS_THROTTLE_MS` later."""
    if _DELAY_S:
        time.sleep(_DELAY_S)
    return event
