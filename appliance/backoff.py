"""Exponential backoff with jitter, shared by the MQTT reconnect loop and the sync uploader."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(attempt: int, low: float, high: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before retry number `attempt` (0 first): low * 2^attempt capped at high, times [0.5, 1)."""
    base = min(high, low * 2 ** min(attempt, 62))
    return base * (0.5 + rand() / 2)
