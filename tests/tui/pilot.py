"""Waiting helpers for pilots: rounds of the app's own loop, never a wall-clock assertion."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from textual.pilot import Pilot

from mongars_edge.tui.app import MongarsApp


async def until(pilot: Pilot[None], predicate: Callable[[], object], rounds: int = 1200) -> None:
    """Let the app run until *predicate()* is true; fail after *rounds* short pauses."""
    # asyncio.sleep, not pilot.pause: pause() also repaints the screen inside the test's own
    # step; the app repaints on its own timer anyway.
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the app never reached the expected state")


def screen_text(app: MongarsApp) -> str:
    """Every character on the current screen, as plain text (for asserts and snapshots)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system=None,
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text(styles=False)
