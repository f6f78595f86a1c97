"""Appliance fixtures: a wrapper for the real CLI; image builds only when asked."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


@pytest.fixture
def cli_wrapper(tmp_path: Path) -> Path:
    """An executable that runs this checkout's CLI, as /usr/bin/mongars-edge does on a box."""
    path = tmp_path / "bin" / "mongars-edge"
    path.parent.mkdir()
    path.write_text(f'#!/bin/sh\nexec {sys.executable} -m mongars_edge "$@"\n')
    path.chmod(0o755)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Image builds take many minutes: run them only when asked (`-m slow` or MONGARS_SLOW=1)."""
    if "slow" in (config.option.markexpr or "") or os.environ.get("MONGARS_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="image build: run with `make test-images` or -m slow")
    for item in items:
        if item.get_closest_marker("slow") and "tests/appliance" in str(item.path):
            item.add_marker(skip)
