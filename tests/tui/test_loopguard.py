"""The TUI tests' guard (tests/tui/loopguard.py) still fails a test that blocks the loop."""

from __future__ import annotations

from pathlib import Path

import pytest

GUARD = Path(__file__).with_name("loopguard.py")


def test_guard_fails_a_test_that_blocks_the_loop(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(GUARD.read_text(encoding="utf-8"))
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(
        """
        import asyncio
        import time

        async def test_blocks():
            time.sleep(0.8)

        async def test_computes():
            end = time.thread_time() + 0.8
            while time.thread_time() < end:
                pass

        async def test_awaits():
            await asyncio.sleep(0.8)
        """
    )
    # As on a quiet machine: a sleep counts even when this box is busy with other test runs.
    monkeypatch.setenv("MONGARS_LOOPGUARD_QUIET", "1")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(["*blocking call inside the event loop*"])
