"""The chat screen: streamed markdown answers, conversation list, stop, new, adapter picker."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import Worker

from mongars_edge.tui.client import DaemonError, NotAvailable, items
from mongars_edge.tui.widgets import Answer, ConfirmScreen, DaemonBanner, PromptArea

if TYPE_CHECKING:
    from mongars_edge.tui.app import MongarsApp

#: A long paste is sent whole but shown shortened, so the screen stays quick.
_SHOWN_CHARS = 2000


class AdapterPicker(ModalScreen[str | None]):
    """Choose the LoRA adapter for the next answers ('' = none)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, adapters: list[str], current: str) -> None:
        super().__init__()
        self.adapters = adapters
        self.current = current

    def compose(self) -> ComposeResult:
        options = [Option("(no adapter)", id="")]
        options += [Option(name, id=name) for name in self.adapters]
        with Vertical(id="picker"):
            yield Static("Adapter for the next answers (Enter picks, Esc cancels)")
            yield OptionList(*options, id="adapters")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id or "")


class ChatScreen(Screen[None]):
    """Talk to the box."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "new_conversation", "New"),
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+o", "pick_adapter", "Adapter"),
        Binding("delete", "delete_conversation", "Delete", show=False),
        Binding("ctrl+r", "reload", "Reload", show=False),
        Binding("tab", "focus_next", "Focus", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.conversation_id: str | None = None
        self.history: list[dict[str, str]] = []
        self.adapter = ""
        self._answer: Worker[None] | None = None
        self._stopped = False

    @property
    def mapp(self) -> MongarsApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield DaemonBanner(id="banner")
        with Horizontal(id="chat-body"):
            with Vertical(id="sidebar"):
                yield Static("Conversations", classes="title")
                yield OptionList(id="conversations")
            with Vertical(id="chat"):
                yield VerticalScroll(id="messages")
                yield Static("", id="chat-status")
                yield PromptArea(
                    id="prompt",
                    soft_wrap=True,
                    show_line_numbers=False,
                    placeholder="Type a message; Enter sends",
                )
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#messages", VerticalScroll).anchor()
        self.query_one(PromptArea).focus()
        self._show_status()
        self.watch(self.mapp, "generation", self._on_connected, init=False)

    def _on_connected(self, _generation: int) -> None:
        self.load_conversations()

    @property
    def streaming(self) -> bool:
        return self._answer is not None and self._answer.is_running

    def _show_status(self, extra: str = "") -> None:
        conv = (
            f"conversation #{self.conversation_id}" if self.conversation_id else "new conversation"
        )
        adapter = self.adapter or "none"
        text = f"{conv} · adapter: {adapter}"
        if extra:
            text += f" · {extra}"
        self.query_one("#chat-status", Static).update(Text(text))

    # -- conversations -------------------------------------------------------------------

    @work(group="conversations", exclusive=True, exit_on_error=False)
    async def load_conversations(self) -> None:
        options = self.query_one("#conversations", OptionList)
        try:
            body = await self.mapp.client.get_json("/api/conversations")
        except NotAvailable:
            options.clear_options()
            options.add_option(Option("(not available on this daemon)", disabled=True))
            return
        except DaemonError as exc:
            self.mapp.note(f"conversations: {exc}")
            return
        options.clear_options()
        for conv in items(body, "conversations"):
            conv_id = str(conv.get("id", ""))
            if not conv_id:
                continue
            title = str(conv.get("title") or f"#{conv_id}")
            options.add_option(Option(Text(title, overflow="ellipsis", no_wrap=True), id=conv_id))
        listed = {option.id for option in options.options}
        if self.conversation_id is not None and self.conversation_id in listed:
            options.highlighted = options.get_option_index(self.conversation_id)

    @on(OptionList.OptionSelected, "#conversations")
    def _open_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id and not self.streaming:
            self.open_conversation(event.option.id)

    @work(group="conversations", exclusive=True, exit_on_error=False)
    async def open_conversation(self, conversation_id: str) -> None:
        try:
            body = await self.mapp.client.get_json(f"/api/conversations/{conversation_id}")
        except DaemonError as exc:
            self.mapp.report(exc, "cannot open the conversation")
            return
        messages = items(body, "messages")
        await self._clear_messages()
        self.conversation_id = conversation_id
        self.history = []
        for message in messages:
            role = str(message.get("role", ""))
            content = str(message.get("content", ""))
            if role not in ("user", "assistant"):
                continue
            self.history.append({"role": role, "content": content})
            await self._add_message(role, content)
        self._show_status()
        self.query_one(PromptArea).focus()

    async def _clear_messages(self) -> None:
        await self.query_one("#messages", VerticalScroll).remove_children()

    async def _add_message(self, role: str, content: str) -> Static:
        box = self.query_one("#messages", VerticalScroll)
        widget: Static
        if role == "user":
            shown = content
            if len(shown) > _SHOWN_CHARS:
                shown = f"{shown[:_SHOWN_CHARS]}… ({len(content) - _SHOWN_CHARS} more characters)"
            widget = Static(Text(shown), classes="message user")
        else:
            widget = Answer(content, classes="message assistant")
        await box.mount(widget)
        return widget

    # -- sending and streaming -----------------------------------------------------------

    @on(PromptArea.Submitted)
    async def _send(self, event: PromptArea.Submitted) -> None:
        text = event.text.strip()
        if not text:
            return
        if self.streaming:
            self.notify("An answer is still streaming; Esc stops it.", severity="warning")
            return
        event.area.clear()
        self.history.append({"role": "user", "content": text})
        await self._add_message("user", text)
        answer = await self._add_message("assistant", "")
        assert isinstance(answer, Answer)
        self._answer = self._stream_answer(answer)

    @work(group="answer", exclusive=True, exit_on_error=False)
    async def _stream_answer(self, answer: Answer) -> None:
        parts: list[str] = []
        outcome = ""
        self._stopped = False
        self._show_status("answering… (Esc stops)")
        try:
            # The daemon keeps the conversation: send only the new question, and "new" first.
            async for delta in self.mapp.client.stream_chat(
                [self.history[-1]],
                conversation_id=self.conversation_id or "new",
                adapter=self.adapter or None,
                max_tokens=self.mapp.max_tokens,
            ):
                if delta.conversation_id and delta.conversation_id != self.conversation_id:
                    self.conversation_id = delta.conversation_id
                    self._show_status("answering… (Esc stops)")
                if delta.text:
                    parts.append(delta.text)
                    answer.append(delta.text)
        except DaemonError as exc:
            outcome = f"error: {exc}"
            self.mapp.report(exc, "the answer failed")
        finally:
            answer.finish()
            if parts:
                self.history.append({"role": "assistant", "content": "".join(parts)})
            if self._stopped:
                outcome = "stopped"
            elif not parts and not outcome:
                outcome = "empty answer"
            if outcome:
                answer.fail(outcome)
            self._show_status(outcome)
            self.load_conversations()

    def action_stop(self) -> None:
        if self._answer is not None and self._answer.is_running:
            self._stopped = True
            self._answer.cancel()
            self.mapp.note("answer stopped by the user")

    async def action_new_conversation(self) -> None:
        self.action_stop()
        self.conversation_id = None
        self.history = []
        await self._clear_messages()
        self.query_one("#conversations", OptionList).highlighted = None
        self._show_status()
        self.query_one(PromptArea).focus()

    @work(group="conversation-delete", exclusive=True, exit_on_error=False)
    async def action_delete_conversation(self) -> None:
        """Del on the conversation list deletes the highlighted conversation (asks first)."""
        options = self.query_one("#conversations", OptionList)
        if not options.has_focus or options.highlighted is None:
            return
        option = options.get_option_at_index(options.highlighted)
        if not option.id:
            return
        question = f"Delete the conversation {option.prompt}?"
        if not await self.app.push_screen_wait(ConfirmScreen(question)):
            return
        try:
            await self.mapp.client.delete(f"/api/conversations/{option.id}")
        except DaemonError as exc:
            self.mapp.report(exc, "cannot delete the conversation")
            return
        self.mapp.note(f"conversation {option.id} deleted")
        if option.id == self.conversation_id:
            await self.action_new_conversation()
        self.load_conversations()

    def action_reload(self) -> None:
        self.load_conversations()

    @work(group="adapters", exclusive=True, exit_on_error=False)
    async def action_pick_adapter(self) -> None:
        try:
            body = await self.mapp.client.get_json("/api/adapters")
        except NotAvailable:
            self.notify("Adapters are not available on this daemon.", severity="warning")
            return
        except DaemonError as exc:
            self.mapp.report(exc, "cannot list adapters")
            return
        names = [str(a.get("name") or a.get("id")) for a in items(body, "adapters")]
        choice = await self.app.push_screen_wait(AdapterPicker(names, self.adapter))
        if choice is not None:
            self.adapter = choice
            self._show_status()
