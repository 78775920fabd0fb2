"""The one back-off schedule for every retry: poll failures, paused partitions, start-up
dependencies and the publisher process's restarts."""

from __future__ import annotations

MAX_BACKOFF_SECONDS = 5.0
FIRST_BACKOFF_SECONDS = 0.25


def backoff(attempt: int, cap: float = MAX_BACKOFF_SECONDS) -> float:
    """Seconds before retry number `attempt` (1, 2, ...): 0.25, 0.5, 1, ... at most `cap`."""
    return float(min(cap, FIRST_BACKOFF_SECONDS * 2 ** min(max(attempt, 1) - 1, 10)))
