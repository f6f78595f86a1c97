"""The autouse guard in conftest.py must catch a blocking call inside the event loop."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")


def test_guard_fails_a_test_that_blocks_the_loop(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_debug = true\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(
        """
        import asyncio
        import time

        async def test_blocks():
            time.sleep(1.6)

        async def test_awaits():
            await asyncio.sleep(0.01)
        """
    )
    # Only the plugin the guard works with: loading every installed one (schemathesis...) would
    # cost the child more than the test itself.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "pytest_asyncio.plugin")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*blocking call inside the event loop*test_blocks*"])
