"""Text snapshots of the screens at 80x24 and 120x40 (MONGARS_UPDATE_SNAPSHOTS=1 rewrites them).

The screens are shot with the daemon down (port 9 refuses), the one state whose every
character is known in advance. Plain text, so a diff in review shows what moved.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mongars_edge.tui.app import MongarsApp
from mongars_edge.tui.client import DaemonClient
from tests.tui.pilot import screen_text, until

SNAPSHOTS = Path(__file__).parent / "snapshots"
DOWN_URL = "http://127.0.0.1:9"
SIZES = [(80, 24), (120, 40)]
# (mode key, name, text that shows the screen has settled)
SCREENS = [
    (None, "chat", "Daemon unreachable"),
    ("f2", "memories", "Cannot load memories"),
    ("f3", "hardware", "/api/hardware: no answer"),
    ("f4", "mesh", "Cannot list peers"),
]


def _settled(app: MongarsApp, text: str) -> bool:
    """The screen shows *text* and its footer (recomposed after a mode switch) is drawn."""
    shown = screen_text(app)
    return text in shown and "f5 Logs" in shown


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("MONGARS_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if not path.exists():
        pytest.fail(f"no snapshot {path.name}; run with MONGARS_UPDATE_SNAPSHOTS=1 and review it")
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"{path.name} changed; review, then MONGARS_UPDATE_SNAPSHOTS=1"


@pytest.mark.parametrize(("width", "height"), SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
async def test_screens_with_the_daemon_down(width: int, height: int) -> None:
    app = MongarsApp(DaemonClient(DOWN_URL), poll_s=60)
    async with app.run_test(size=(width, height)) as pilot:
        for key, name, settled in SCREENS:
            if key:
                await pilot.press(key)
            await until(pilot, lambda settled=settled: _settled(app, settled))  # type: ignore[misc]
            check_snapshot(f"{name}_{width}x{height}", screen_text(app))
