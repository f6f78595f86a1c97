"""The memories screen: what the box remembers about you; search and delete."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from mongars_edge.tui.client import DaemonError, NotAvailable, items
from mongars_edge.tui.widgets import ConfirmScreen, DaemonBanner

if TYPE_CHECKING:
    from mongars_edge.tui.app import MongarsApp


def _text(memory: dict[str, Any]) -> str:
    return str(memory.get("text") or memory.get("content") or memory.get("summary") or "")


class MemoriesScreen(Screen[None]):
    """Search the box's memories of you, and forget some."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+f", "focus_search", "Search"),
        Binding("delete,ctrl+d", "delete", "Delete"),
        Binding("ctrl+r", "reload", "Reload"),
    ]

    @property
    def mapp(self) -> MongarsApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield DaemonBanner(id="banner")
        yield Input(placeholder="Search memories (Enter)", id="memory-search")
        yield Static("", id="memories-status")
        yield DataTable(id="memories", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("id", key="id", width=8)
        table.add_column("memory", key="text")
        self.watch(self.mapp, "generation", self._on_connected, init=False)
        self.load()

    def _on_connected(self, _generation: int) -> None:
        self.load()

    def _status(self, text: str) -> None:
        self.query_one("#memories-status", Static).update(Text(text))

    @on(Input.Submitted, "#memory-search")
    def _search(self) -> None:
        self.load()

    def action_focus_search(self) -> None:
        self.query_one("#memory-search", Input).focus()

    def action_reload(self) -> None:
        self.load()

    @work(group="memories", exclusive=True, exit_on_error=False)
    async def load(self) -> None:
        query = self.query_one("#memory-search", Input).value.strip()
        table = self.query_one(DataTable)
        try:
            if query:
                body = await self.mapp.client.get_json("/api/memories/search", q=query)
            else:
                body = await self.mapp.client.get_json("/api/memories")
        except NotAvailable:
            table.clear()
            self._status("Memories are not available on this daemon.")
            return
        except DaemonError as exc:
            self._status(f"Cannot load memories: {exc}")
            return
        table.clear()
        # A search also finds past messages; only memories can be forgotten here.
        found = [m for m in items(body, "memories") if m.get("source", "memory") == "memory"]
        for memory in found:
            key = str(memory.get("id", ""))
            table.add_row(key, Text(_text(memory), overflow="ellipsis", no_wrap=True), key=key)
        label = f"matching {query!r}" if query else "in total"
        self._status(f"{len(found)} memories {label} · Del forgets the selected one")

    @work(group="memory-delete", exclusive=True, exit_on_error=False)
    async def action_delete(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        if not key:
            return
        text = str(table.get_cell(key, "text"))[:60]
        if not await self.app.push_screen_wait(ConfirmScreen(f"Forget this memory?\n{text}")):
            return
        try:
            await self.mapp.client.delete(f"/api/memories/{key}")
        except DaemonError as exc:
            self.mapp.report(exc, "cannot delete the memory")
            return
        self.mapp.note(f"memory {key} deleted")
        self.notify("Memory forgotten.")
        self.load()
