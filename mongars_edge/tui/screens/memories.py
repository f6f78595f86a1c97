"""The memories screen: what the box remembers about you; search (memories and past messages)
and forget memories."""

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


#: Row keys of message hits; only memories (plain ids) can be forgotten here.
_MESSAGE_KEY = "message:"


def _text(memory: dict[str, Any]) -> str:
    return str(memory.get("text") or memory.get("content") or memory.get("summary") or "")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


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
        yield Input(placeholder="Search memories and past messages (Enter)", id="memory-search")
        yield Static("", id="memories-status")
        yield DataTable(id="memories", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("id", key="id", width=8)
        table.add_column("from", key="source", width=13)
        table.add_column("memory or message", key="text")
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
        # A search also finds past messages (shown with their role); only memories can be
        # forgotten here: a message goes with its conversation (Chat screen).
        found = items(body, "data")
        memories = 0
        for hit in found:
            is_memory = hit.get("source", "memory") == "memory"
            memories += is_memory
            ident = str(hit.get("id", ""))
            key = ident if is_memory else _MESSAGE_KEY + ident
            source = str(hit.get("kind") or "memory") if is_memory else f"msg {hit.get('kind', '')}"
            text = Text(_text(hit), overflow="ellipsis", no_wrap=True)
            table.add_row(ident, source.strip(), text, key=key)
        shown = _count(memories, "memory", "memories")
        if query:
            messages = _count(len(found) - memories, "message", "messages")
            shown += f" and {messages} matching {query!r}"
        else:
            shown += " in total"
        self._status(f"{shown} · Del forgets the selected memory")

    @work(group="memory-delete", exclusive=True, exit_on_error=False)
    async def action_delete(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        if not key:
            return
        if key.startswith(_MESSAGE_KEY):
            self.notify("A past message is forgotten with its conversation (Chat screen, Del).")
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
