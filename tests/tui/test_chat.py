"""The chat screen against a real daemon: streamed answer, stop, new conversation, adapters."""

from __future__ import annotations

from textual.widgets import OptionList

from mongars_edge.tui.screens.chat import AdapterPicker, ChatScreen
from mongars_edge.tui.widgets import Answer, ConfirmScreen, PromptArea
from tests.support.server import Server
from tests.support.types import AppFactory
from tests.tui.pilot import screen_text, until


def _has_option(options: OptionList, option_id: str) -> bool:
    return any(option.id == option_id for option in options.options)


def _answers(chat: ChatScreen) -> list[Answer]:
    return list(chat.query("Answer.assistant").results(Answer))


async def test_prompt_streams_a_markdown_answer(chat_api: Server, make_app: AppFactory) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.daemon_state == "up")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        await pilot.press(*"Hello")  # typed keys reach the prompt
        assert chat.query_one(PromptArea).text == "Hello"
        await pilot.press("enter")
        await until(pilot, lambda: chat._answer is not None)
        await until(pilot, lambda: not chat.streaming)
        answer = _answers(chat)[-1]
        assert answer.source.strip(), "no text streamed"
        assert chat.history[-1] == {"role": "assistant", "content": answer.source}
        assert chat.query_one(PromptArea).text == ""
        conversation = chat.conversation_id
        assert conversation, "the daemon did not name the conversation"
        listed = chat.query_one("#conversations", OptionList)
        await until(pilot, lambda: _has_option(listed, conversation))
        # New conversation: an empty screen, no id.
        await pilot.press("ctrl+n")
        await until(pilot, lambda: not _answers(chat))
        assert chat.conversation_id is None and chat.history == []
        assert "new conversation" in screen_text(app)
        # Picking it in the list brings the stored turns back.
        listed.focus()
        listed.highlighted = listed.get_option_index(conversation)
        await pilot.press("enter")
        await until(pilot, lambda: chat.conversation_id == conversation and _answers(chat))
        assert [m["role"] for m in chat.history] == ["user", "assistant"]
        assert chat.history[0]["content"] == "Hello"
        # Del on the list deletes it, after a yes.
        await until(pilot, lambda: chat.query_one(PromptArea).has_focus)  # opening is done
        listed.focus()
        await until(pilot, lambda: listed.has_focus)
        await pilot.press("delete")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: not _has_option(listed, conversation))
        assert chat.conversation_id is None


async def test_escape_stops_a_long_answer(chat_api: Server, make_app: AppFactory) -> None:
    app = make_app(max_tokens=400)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.daemon_state == "up")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        chat.query_one(PromptArea).text = "Write a very long story about a robot."
        await pilot.press("enter")
        await until(pilot, lambda: bool(_answers(chat) and _answers(chat)[-1].source))
        await pilot.press("escape")
        await until(pilot, lambda: not chat.streaming)
        assert chat._answer is not None and chat._answer.is_cancelled
        assert "stopped" in screen_text(app)
        assert _answers(chat)[-1].has_class("-failed")


async def test_adapter_picker_or_a_clear_not_available(
    daemon: Server, make_app: AppFactory
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
