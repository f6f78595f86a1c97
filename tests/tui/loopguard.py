"""A blocking-call guard for Textual tests that tells work from waiting for a CPU."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_BLOCKING_S = 0.5
_SCHEDSTAT = Path("/proc/thread-self/schedstat")


def _run_queue_wait_ns() -> int:
    """Time this thread spent runnable but not running (0 when the kernel does not say)."""
    try:
        return int(_SCHEDSTAT.read_bytes().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


@pytest.fixture(autouse=True)
def no_blocking_in_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The suite's blocking-call guard, minus the time the scheduler kept the loop waiting.

    Textual repaints inside the loop: measured here, its longest callback costs ~0.15 s of
    CPU, but on a build box shared by several test runs (load 15-19 on 2 cores) the same
    callback takes up to 15x that in wall time, all of it spent waiting for a CPU. This guard
    times every loop callback and subtracts the thread's run-queue wait
    (/proc/thread-self/schedstat), so what remains is work or blocking done in the callback:
    a sleep, blocking I/O or heavy computation over 0.5 s still fails the test.
    """
    hits: list[str] = []
    original = asyncio.events.Handle._run

    def timed(handle: asyncio.events.Handle) -> None:
        start, cpu, waited = time.perf_counter(), time.thread_time(), _run_queue_wait_ns()
        try:
            original(handle)
        finally:
            busy = time.perf_counter() - start - (_run_queue_wait_ns() - waited) / 1e9
            if busy > _BLOCKING_S:
                used = time.thread_time() - cpu
                hits.append(f"{busy:.2f} s ({used:.2f} s CPU) in {handle!r:.160}")

    monkeypatch.setattr(asyncio.events.Handle, "_run", timed)
    yield
    if hits:
        pytest.fail("blocking call inside the event loop: " + "; ".join(hits))
