"""A blocking-call guard for Textual tests that tells work from waiting for a CPU."""

from __future__ import annotations

import asyncio
import os
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


def _oversubscribed() -> bool:
    """More runnable processes than CPUs, twice over (a shared build box under load)."""
    if os.environ.get("MONGARS_LOOPGUARD_QUIET") == "1":  # the guard's own test
        return False
    return os.getloadavg()[0] > 2 * (os.cpu_count() or 1)


@pytest.fixture(autouse=True)
def no_blocking_in_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The suite's blocking-call guard, made to tell work and blocking from waiting for a CPU.

    Textual repaints inside the loop: measured here, its longest callbacks cost ~0.15 s of
    CPU, but on a build box shared by several test runs (load 15-19 on 2 cores) the same
    callbacks take seconds of wall time, spent waiting for a CPU or for the GIL held by a
    thread that waits for one. So, for every loop callback:

    - more than 0.5 s of CPU fails the test, always (heavy work in the loop);
    - more than 0.5 s of wall time, minus the thread's run-queue wait
      (/proc/thread-self/schedstat), fails it unless the machine is oversubscribed, where
      a sleep cannot be told from a wait for the GIL. On a quiet machine (CI) a sleep or a
      blocking read in the loop fails as in the suite's own guard.
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
                if used > _BLOCKING_S or not _oversubscribed():
                    hits.append(f"{busy:.2f} s ({used:.2f} s CPU) in {handle!r:.160}")

    monkeypatch.setattr(asyncio.events.Handle, "_run", timed)
    yield
    if hits:
        pytest.fail("blocking call inside the event loop: " + "; ".join(hits))
