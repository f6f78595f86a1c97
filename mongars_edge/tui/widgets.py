"""Widgets shared by the screens: the daemon banner, the prompt, a yes/no dialog."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rich.markdown import Markdown as RichMarkdown
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid
from textual.message import Message
from textual.screen import ModalScreen
from textual.strip import Strip
from textual.widgets import Button, Label, Static, TextArea

if TYPE_CHECKING:
    from mongars_edge.tui.app import MongarsApp


class DaemonBanner(Static):
    """A line on top of every screen while the daemon is down or restarting."""

    def on_mount(self) -> None:
        app: MongarsApp = self.app  # type: ignore[assignment]
        self.watch(app, "daemon_state", self._refresh_banner)
        self.watch(app, "daemon_detail", self._refresh_banner)

    def _refresh_banner(self, _value: str) -> None:
        app: MongarsApp = self.app  # type: ignore[assignment]
        state = app.daemon_state
        self.display = state != "up"
        self.set_class(state == "down", "-down")
        if state == "down":
            self.update(
                f"Daemon unreachable: {app.daemon_detail} — reconnecting every {app.poll_s:g} s"
            )
        elif state == "connecting":
            self.update(f"Connecting to {app.client.url} …")
        elif state == "restarted":
            self.update("The daemon restarted; reloading.")


class PromptArea(TextArea):
    """A multi-line prompt: Enter sends, pasted text keeps its newlines."""

    class Submitted(Message):
        def __init__(self, area: PromptArea, text: str) -> None:
            super().__init__()
            self.area = area
            self.text = text

    def render_line(self, y: int) -> Strip:
        # Textual 8.2.8 fails wrapping the placeholder into zero columns (a 1-column terminal).
        if self.scrollable_content_region.width <= 0:
            return Strip.blank(self.size.width)
        return super().render_line(y)

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self, self.text))
            return
        await super()._on_key(event)


class ConfirmScreen(ModalScreen[bool]):
    """Ask a yes/no question; y/n or the buttons answer it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Grid(id="confirm"):
            yield Label(self.question, id="question")
            yield Button("Yes (y)", variant="error", id="yes")
            yield Button("No (n)", variant="primary", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class Answer(Static):
    """An answer rendered as Markdown while it streams.

    One widget repainted at most every `_REPAINT_S`, rather than Textual's Markdown widget,
    which mounts a widget per block: on a Pi that styling work would hold the loop.
    """

    _REPAINT_S = 0.1

    def __init__(self, source: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self._pending = False
        if source:
            self.update(RichMarkdown(source))

    def append(self, text: str) -> None:
        self.source += text
        if not self._pending:
            self._pending = True
            self.set_timer(self._REPAINT_S, self._repaint)

    def _repaint(self) -> None:
        self._pending = False
        self.update(RichMarkdown(self.source))

    def finish(self) -> None:
        """Show the whole answer now."""
        self._repaint()

    def fail(self, why: str) -> None:
        """Say in the answer's place why there is none (or no more)."""
        self.add_class("-failed")
        if self.source:
            self.border_subtitle = why
        else:
            self.update(Text(why))
