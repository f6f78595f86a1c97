"""The chat screen against a real daemon: streamed answer, stop, new conversation, adapters."""

from __future__ import annotations

from textual.widgets import Markdown, OptionList

from mongars_edge.tui.screens.chat import AdapterPicker, ChatScreen
from mongars_edge.tui.widgets import PromptArea
from tests.tui.conftest import AppFactory, Daemon
from tests.tui.pilot import screen_text, until


def _answers(chat: ChatScreen) -> list[Markdown]:
    return list(chat.query("Markdown.assistant").results(Markdown))


async def test_prompt_streams_a_markdown_answer(chat_api: Daemon, make_app: AppFactory) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.daemon_state == "up")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        await pilot.press(*"Say hello in one short sentence.")
        await pilot.press("enter")
        await until(pilot, lambda: chat._answer is not None)
        await until(pilot, lambda: not chat.streaming)
        answer = _answers(chat)[-1]
        assert answer.source.strip(), "no text streamed"
        assert chat.history[-1] == {"role": "assistant", "content": answer.source}
        assert chat.query_one(PromptArea).text == ""
        assert chat.conversation_id, "the daemon did not name the conversation"
        await until(pilot, lambda: chat.query_one("#conversations", OptionList).option_count > 0)


async def test_escape_stops_a_long_answer(chat_api: Daemon, make_app: AppFactory) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.daemon_state == "up")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        chat.query_one(PromptArea).text = "Write a very long story about a robot, 500 words."
        await pilot.press("enter")
        await until(pilot, lambda: bool(_answers(chat) and _answers(chat)[-1].source))
        await pilot.press("escape")
        await until(pilot, lambda: not chat.streaming)
        assert chat._answer is not None and chat._answer.is_cancelled
        assert "stopped" in screen_text(app)
        # The box is free again: the next prompt streams.
        chat.query_one(PromptArea).text = "Hi"
        await pilot.press("enter")
        await until(pilot, lambda: len(_answers(chat)) == 2 and not chat.streaming)


async def test_new_conversation_clears_the_screen(chat_api: Daemon, make_app: AppFactory) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.daemon_state == "up")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        chat.query_one(PromptArea).text = "Hello"
        await pilot.press("enter")
        await until(pilot, lambda: chat._answer is not None and not chat.streaming)
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert chat.conversation_id is None
        assert chat.history == []
        assert not _answers(chat)
        assert "new conversation" in screen_text(app)


async def test_adapter_picker_or_a_clear_not_available(
    daemon: Daemon, make_app: AppFactory
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.daemon_state == "up")
        await pilot.press("ctrl+o")
        await until(
            pilot,
            lambda: (
                isinstance(app.screen, AdapterPicker)
                or any("not available" in str(n.message) for n in app._notifications)
            ),
        )
        if isinstance(app.screen, AdapterPicker):
            await pilot.press("enter")  # "(no adapter)"
            await until(pilot, lambda: isinstance(app.screen, ChatScreen))
            assert "adapter: none" in screen_text(app)
