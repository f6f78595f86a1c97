"""Admission: a bounded queue, fair round-robin across users, deadlines and an idle signal.

The loop thread submits; the inference worker thread pops. Both touch the queue under one
short lock; the worker never waits on the loop (idle/busy events are set on the loop through
call_soon_threadsafe).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from mongars_edge.inference.errors import QueueFullError

T = TypeVar("T")
_ANONYMOUS = "\x00anonymous"


@dataclass
class _Entry(Generic[T]):
    item: T
    user: str
    deadline: float


class Scheduler(Generic[T]):
    """Bounded, fair admission queue shared by the event loop and the inference worker."""

    def __init__(self, capacity: int, n_slots: int, *, service_s_guess: float = 5.0) -> None:
        self.capacity = capacity
        self.n_slots = max(1, n_slots)
        self._lock = threading.Lock()
        self._queues: OrderedDict[str, deque[_Entry[T]]] = OrderedDict()
        self._depth = 0
        self._active = 0
        self._service_s = service_s_guess
        self._work = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = asyncio.Event()
        self.arrivals = 0
        # Requests being prepared (template, tokens, sampler) on their way to `submit`: the
        # worker waits a moment for them before a first prefill, so that requests sent together
        # start together (changed on the loop thread, read by the worker).
        self.preparing = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the event loop whose idle/busy events this scheduler sets."""
        self._loop = loop

    # -- loop side -------------------------------------------------------------------------

    def submit(self, item: T, *, user: str | None, deadline_s: float) -> None:
        """Queue `item` (loop thread); QueueFullError when the queue is at capacity."""
        with self._lock:
            if self._depth >= self.capacity:
                raise QueueFullError(self._depth, self._retry_after_locked())
            key = user or _ANONYMOUS
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = deque()
            queue.append(_Entry(item, key, time.monotonic() + deadline_s))
            self._depth += 1
            self.arrivals += 1
        self._idle.clear()
        self._busy.set()
        self._work.set()

    def remove(self, item: T) -> bool:
        """Take a still-queued item back (its consumer left); False if a worker has it."""
        with self._lock:
            for key, queue in self._queues.items():
                for entry in queue:
                    if entry.item is item:
                        queue.remove(entry)
                        self._depth -= 1
                        if not queue:
                            del self._queues[key]
                        self._note_locked()
                        return True
        return False

    def is_idle(self) -> bool:
        """Nothing queued and nothing running."""
        with self._lock:
            return self._depth == 0 and self._active == 0

    async def wait_idle(self) -> None:
        """Return once the box has nothing to do (memory consolidation runs then)."""
        while not self.is_idle():
            self._idle.clear()
            await self._idle.wait()

    async def wait_busy(self) -> None:
        """Return as soon as a request is queued or running (consolidation yields then)."""
        while self.is_idle():
            self._busy.clear()
            await self._busy.wait()

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def active(self) -> int:
        return self._active

    def retry_after_s(self) -> float:
        with self._lock:
            return self._retry_after_locked()

    def _retry_after_locked(self) -> float:
        waves = (self._depth + 1) / self.n_slots
        return float(min(120, max(1, math.ceil(waves * self._service_s))))

    # -- worker side -----------------------------------------------------------------------

    def pop(self) -> T | None:
        """Next item: users take turns, each user's requests in order (worker thread)."""
        with self._lock:
            if not self._queues:
                return None
            key, queue = next(iter(self._queues.items()))
            entry = queue.popleft()
            if queue:
                self._queues.move_to_end(key)
            else:
                del self._queues[key]
            self._depth -= 1
            self._active += 1
            return entry.item

    def expired(self, now: float | None = None) -> list[T]:
        """Remove and return queued items past their deadline (worker thread)."""
        now = time.monotonic() if now is None else now
        out: list[T] = []
        with self._lock:
            for key in list(self._queues):
                queue = self._queues[key]
                keep = deque(e for e in queue if e.deadline > now)
                out.extend(e.item for e in queue if e.deadline <= now)
                if keep:
                    self._queues[key] = keep
                else:
                    del self._queues[key]
            self._depth -= len(out)
            if out:
                self._note_locked()
        return out

    def finished(self, service_s: float | None = None) -> None:
        """An item taken with pop() is done (worker thread)."""
        with self._lock:
            self._active = max(0, self._active - 1)
            if service_s is not None:
                self._service_s = 0.8 * self._service_s + 0.2 * service_s
            self._note_locked()

    def wait_for_work(self, timeout: float) -> None:
        """Sleep until something is submitted or `wake()` is called (worker thread)."""
        self._work.wait(timeout)
        self._work.clear()

    def wake(self) -> None:
        """Wake the worker (a cancellation, shutdown)."""
        self._work.set()

    def _note_locked(self) -> None:
        if self._depth == 0 and self._active == 0 and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
                self._loop.call_soon_threadsafe(self._set_idle)

    def _set_idle(self) -> None:
        if self.is_idle():
            self._busy.clear()
            self._idle.set()
