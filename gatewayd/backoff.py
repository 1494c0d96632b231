"""Capped exponential backoff, shared by every reconnect loop (BLE links, the MQTT broker).

aioesphomeapi's shape: the n-th consecutive failure waits ``base * 1.8**(n-1)``, capped; each
caller picks ``base`` per kind of failure (link/backoff.py, publish/backoff.py).
"""

from __future__ import annotations

import random
from typing import Final

GROWTH: Final = 1.8
MAX_DELAY_S: Final = 60.0


def capped_backoff(
    base_s: float,
    attempt: int,
    *,
    rng: random.Random | None = None,
    jitter: float = 0.1,
    growth: float = GROWTH,
    cap_s: float = MAX_DELAY_S,
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` after ``attempt`` consecutive failures.

    With ``rng``, up to ``jitter`` (a fraction) is added so that many clients failing together
    do not retry in lockstep.
    """
    if attempt < 1:
        return 0.0
    delay = min(base_s * growth ** (attempt - 1), cap_s)
    if rng is not None:
        delay *= 1.0 + jitter * rng.random()
    return delay
