"""Exponential delays with jitter: mesh reconnects, RPC worker restarts, split retries."""

from __future__ import annotations

import random


class Backoff:
    """Delays from `first`, doubled up to `cap`, each within +-20% (so boxes that failed
    together do not retry together); `reset` after a success starts over."""

    def __init__(self, first: float = 0.2, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.first
