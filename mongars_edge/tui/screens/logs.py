"""The logs screen: the daemon's recent log lines (when it shares them) and the TUI's own."""

from __future__ import annotations

import asyncio
import shutil
from typing import TYPE_CHECKING, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Log, Static

from mongars_edge.tui.client import DaemonError, NotAvailable, items
from mongars_edge.tui.widgets import DaemonBanner

if TYPE_CHECKING:
    from mongars_edge.tui.app import MongarsApp

_JOURNAL_LINES = 200


async def journal_lines(unit: str = "mongars-edge") -> list[str] | None:
    """The unit's last journal lines, or None when journalctl is absent or refuses."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return None
    proc = await asyncio.create_subprocess_exec(
        journalctl,
        "-u",
        unit,
        "-n",
        str(_JOURNAL_LINES),
        "-o",
        "short-iso",
        "--no-pager",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return None
    return out.decode("utf-8", "replace").splitlines()


class LogsScreen(Screen[None]):
    """What happened: daemon log lines and this TUI's connection events."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+r", "reload", "Reload")]

    @property
    def mapp(self) -> MongarsApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield DaemonBanner(id="banner")
        yield Static("", id="logs-source")
        yield Log(id="log", max_lines=2000)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.load()

    def on_screen_resume(self) -> None:
        self.load()

    def action_reload(self) -> None:
        self.load()

    @work(group="logs", exclusive=True, exit_on_error=False)
    async def load(self) -> None:
        lines: list[str] | None = None
        source = ""
        try:
            body = await self.mapp.client.get_json("/api/logs", limit=_JOURNAL_LINES)
            lines = [str(e.get("line") or e.get("msg") or e) for e in items(body, "lines")]
            source = "daemon log (/api/logs)"
        except NotAvailable:
            lines = await journal_lines()
            source = "journal of mongars-edge.service" if lines is not None else ""
        except DaemonError as exc:
            source = f"daemon log unavailable: {exc}"
        if not source:
            source = "daemon log: not available on this daemon (no /api/logs, no journal access)"
        self.query_one("#logs-source", Static).update(f"{source} · then this TUI's events")
        log = self.query_one(Log)
        log.clear()
        log.write_lines([*(lines or []), "── TUI events ──", *self.mapp.events])
