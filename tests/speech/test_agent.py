"""The Wyoming conversation agent: the `wyoming` package's own client against our server on a
port-0 socket, answering with the real chat pipeline (SmolLM2-135M, SQLite, the e5 embedder)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from wyoming.asr import Transcript
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.handle import Handled, HandledChunk, HandledStart, HandledStop, NotHandled
from wyoming.info import Describe, Info

from mongars_edge.inference.engine import ChatRequest, Sampling
from mongars_edge.runtime import Runtime
from mongars_edge.settings import load_settings
from mongars_edge.speech.agent import LINK_SOURCE, VOICE_USER, VoiceAgent
from mongars_edge.speech.wyoming import WyomingServer, open_wyoming
from tests.support.env import free_port
from tests.support.server import TEST_SETTINGS

TIMEOUT = 180  # a hang guard, not a timing assertion
MAX_TOKENS = 40  # short replies: the suite runs on two shared cores


@pytest.fixture
async def server(runtime: Runtime) -> AsyncIterator[WyomingServer]:
    agent = VoiceAgent(runtime.chat, max_tokens=MAX_TOKENS)
    async with open_wyoming(None, None, "127.0.0.1", 0, agent) as srv:
        yield srv


async def _read(client: AsyncTcpClient) -> Event:
    event = await asyncio.wait_for(client.read_event(), TIMEOUT)
    assert event is not None, "server closed the connection"
    return event


class Answer:
    """What the server sent for one transcript, up to `handled-stop` or a terminal event."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.types = [e.type for e in events]

    @property
    def handled(self) -> Handled:
        return Handled.from_event(next(e for e in self.events if Handled.is_type(e.type)))

    @property
    def not_handled(self) -> NotHandled:
        return NotHandled.from_event(next(e for e in self.events if NotHandled.is_type(e.type)))

    @property
    def chunks(self) -> list[str]:
        return [HandledChunk.from_event(e).text for e in self.events if e.type == "handled-chunk"]


async def _ask(client: AsyncTcpClient, transcript: Transcript | Event) -> Answer:
    event = transcript if isinstance(transcript, Event) else transcript.event()
    await client.write_event(event)
    events: list[Event] = []
    streaming = False
    while True:
        event = await _read(client)
        events.append(event)
        streaming = streaming or HandledStart.is_type(event.type)
        if HandledStop.is_type(event.type) or (not streaming and event.type != "handled-chunk"):
            return Answer(events)


async def _say(port: int, text: str, language: str, conversation: str | None) -> Answer:
    context = None if conversation is None else {"conversation_id": conversation}
    async with AsyncTcpClient("127.0.0.1", port) as client:
        return await _ask(client, Transcript(text=text, language=language, context=context))


async def test_describe_lists_a_streaming_handle_program_and_no_speech(
    server: WyomingServer,
) -> None:
    async with AsyncTcpClient("127.0.0.1", server.port) as client:
        await client.write_event(Describe().event())
        info = Info.from_event(await _read(client))
    assert info.tts == [] and info.asr == []
    (program,) = info.handle
    assert program.installed and program.supports_handled_streaming
    assert program.name == "monGARS"
    assert sorted(program.models[0].languages) == ["en", "fr"]


async def test_a_transcript_streams_sentences_then_handled_then_stop(
    server: WyomingServer, runtime: Runtime
) -> None:
    answer = await _say(server.port, "What is the capital of France?", "en", "01HA-TEST-1")
    types = answer.types
    # The protocol's streaming form: start, chunks, the whole `handled` for older clients
    # (Home Assistant stops reading there), then stop.
    assert types[0] == "handled-start" and types[-2:] == ["handled", "handled-stop"], types
    assert set(types[1:-2]) == {"handled-chunk"}, types
    start = HandledStart.from_event(answer.events[0])
    assert start.context == {"conversation_id": "01HA-TEST-1", "language": "en"}
    handled = answer.handled
    assert handled.context == start.context
    assert handled.text and handled.text.strip()
    words = " ".join(handled.text.split())
    assert answer.chunks, "no sentence was streamed"
    assert all(chunk.strip() in words for chunk in answer.chunks)
    await runtime.chat.drain()
    voice = await runtime.memory.require_user(VOICE_USER)
    assert not voice.is_admin and voice.password_hash is None
    (conversation,) = await runtime.memory.list_conversations(voice.id)
    stored = await runtime.memory.get_messages(voice.id, conversation.id)
    assert [(m.role, m.content) for m in stored] == [
        ("user", "What is the capital of France?"),
        ("assistant", stored[1].content),
    ]
    assert stored[1].content.strip() == handled.text


async def test_one_home_assistant_conversation_is_one_stored_conversation(
    server: WyomingServer, runtime: Runtime
) -> None:
    first = await _say(server.port, "My name is Ada. Say hello.", "en", "01HAONE")
    again = await _say(server.port, "What is my name?", "en", "01HAONE")
    other = await _say(server.port, "Tell me a short joke.", "en", "01HATWO")
    for answer in (first, again, other):
        assert answer.types[-2:] == ["handled", "handled-stop"], answer.types
    await runtime.chat.drain()
    voice = await runtime.memory.require_user(VOICE_USER)
    conversations = await runtime.memory.list_conversations(voice.id)
    assert len(conversations) == 2
    by_key = {}
    for key in ("01HAONE", "01HATWO"):
        found = await runtime.memory.conversation_link(voice.id, LINK_SOURCE, key)
        assert found is not None
        by_key[key] = [m.content for m in await runtime.memory.get_messages(voice.id, found)]
    one, two = by_key["01HAONE"], by_key["01HATWO"]
    assert len(one) == 4 and one[0] == "My name is Ada. Say hello." and one[2] == "What is my name?"
    assert len(two) == 2 and two[0] == "Tell me a short joke."
    # The voice user's conversations are its own: nobody else's list shows them.
    other_user = await runtime.memory.create_user("alice")
    assert await runtime.memory.list_conversations(other_user.id) == []


async def test_without_a_conversation_id_each_turn_starts_one_and_names_it(
    server: WyomingServer, runtime: Runtime
) -> None:
    first = await _say(server.port, "Hello there.", "en", None)
    key = first.handled.context["conversation_id"]  # type: ignore[index]
    assert isinstance(key, str) and key
    again = await _say(server.port, "Hello again.", "en", key)
    assert again.handled.context["conversation_id"] == key  # type: ignore[index]
    await _say(server.port, "Hello once more.", "en", None)
    await runtime.chat.drain()
    voice = await runtime.memory.require_user(VOICE_USER)
    sizes = sorted(
        [
            len(await runtime.memory.get_messages(voice.id, c.id))
            for c in await runtime.memory.list_conversations(voice.id)
        ]
    )
    assert sizes == [2, 4]


async def test_a_french_transcript_is_a_french_turn(
    server: WyomingServer, runtime: Runtime
) -> None:
    question = "Quelle est la capitale de la France ?"
    answer = await _say(server.port, question, "fr-CA", "01HAFR")
    assert answer.handled.context == {"conversation_id": "01HAFR", "language": "fr"}
    # A language the words do not settle is taken from the transcript's language.
    short = await _say(server.port, "Paris ?", "fr", "01HAFR")
    assert short.handled.context["language"] == "fr"  # type: ignore[index]
    english = await _say(server.port, "Thanks, that is all for today.", "en", "01HAEN")
    assert english.handled.context["language"] == "en"  # type: ignore[index]
    await runtime.chat.drain()
    voice = await runtime.memory.require_user(VOICE_USER)
    found = await runtime.memory.conversation_link(voice.id, LINK_SOURCE, "01HAFR")
    assert found is not None
    stored = await runtime.memory.get_messages(voice.id, found)
    assert [m.role for m in stored] == ["user", "assistant"] * 2
    assert stored[0].content == question
    assert all(m.content.strip() for m in stored)


async def test_bad_input_gets_a_clear_answer_and_the_server_keeps_serving(
    server: WyomingServer, runtime: Runtime
) -> None:
    async with AsyncTcpClient("127.0.0.1", server.port) as client:
        empty = await _ask(client, Transcript(text="   ", language="en"))
        assert empty.types == ["not-handled"]
        assert empty.not_handled.text == "I did not hear anything to answer."
        french = await _ask(client, Transcript(text="", language="fr"))
        assert french.not_handled.text == "Je n'ai rien entendu à répondre."
        no_text = await _ask(client, Event(type="transcript", data={"language": "en"}))
        assert no_text.types == ["not-handled"]
        for context in ("not an object", {"conversation_id": ["x"]}, {"conversation_id": ""}):
            event = Event(type="transcript", data={"text": "Hi.", "context": context})
            bad = await _ask(client, event)
            assert bad.types == ["not-handled"], (context, bad.types)
            assert "did not understand" in (bad.not_handled.text or "")
        await client.write_event(Event(type="make-coffee", data={"strength": 11}))
        unknown = Error.from_event(await _read(client))
        assert unknown.code == "unknown_event" and "make-coffee" in unknown.text
        # The same connection still answers.
        await client.write_event(Describe().event())
        assert Info.is_type((await _read(client)).type)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: box\r\n\r\n")
    await writer.drain()
    said = await asyncio.wait_for(reader.read(), TIMEOUT)  # an error, then the server hangs up
    assert b'"bad_frame"' in said
    writer.close()
    await writer.wait_closed()
    answer = await _say(server.port, "Are you still there?", "en", "01HAAFTER")
    assert answer.types[-2:] == ["handled", "handled-stop"]
    await runtime.chat.drain()
    voice = await runtime.memory.require_user(VOICE_USER)
    # Nothing refused was stored: only the last, good turn.
    (conversation,) = await runtime.memory.list_conversations(voice.id)
    assert len(await runtime.memory.get_messages(voice.id, conversation.id)) == 2


def _box(data_dir: Path, **overrides: Any) -> Callable[[], AbstractAsyncContextManager[Runtime]]:
    @asynccontextmanager
    async def opened() -> AsyncIterator[Runtime]:
        cli = {"data_dir": data_dir, **TEST_SETTINGS, **overrides}
        async with Runtime(load_settings(environ={}, cli=cli)) as box:
            yield box

    return opened


async def test_no_chat_model_is_a_not_handled_sentence_not_a_hangup(data_dir: Path) -> None:
    async with _box(data_dir, model="off")() as box:
        agent = VoiceAgent(box.chat, max_tokens=MAX_TOKENS)
        async with (
            open_wyoming(None, None, "127.0.0.1", 0, agent) as srv,
            AsyncTcpClient("127.0.0.1", srv.port) as client,
        ):
            answer = await _ask(client, Transcript(text="Hello?", language="en"))
            assert answer.types == ["not-handled"]
            assert answer.not_handled.text == "No chat model is loaded on the box right now."
            french = await _ask(client, Transcript(text="Allô, es-tu là ?", language="fr"))
            assert "Aucun modèle" in (french.not_handled.text or "")
            await client.write_event(Describe().event())
            assert Info.is_type((await _read(client)).type)
        voice = await box.memory.require_user(VOICE_USER)
        assert await box.memory.list_conversations(voice.id) == []  # nothing half-stored


async def test_a_speech_only_server_says_conversation_is_off(data_dir: Path) -> None:
    async with (
        open_wyoming(None, None, "127.0.0.1", 0) as srv,
        AsyncTcpClient("127.0.0.1", srv.port) as client,
    ):
        await client.write_event(Describe().event())
        assert Info.from_event(await _read(client)).handle == []
        answer = await _ask(client, Transcript(text="Allume la lumière", language="fr"))
        assert answer.not_handled.text == "La conversation est désactivée sur cette boîte."


async def test_with_speech_off_the_agent_setting_decides_if_wyoming_serves(
    tmp_path: Path,
) -> None:
    off = _box(tmp_path / "off", wyoming_port=free_port(), wyoming_agent=False)
    async with off() as box:
        assert box.wyoming is None
    async with _box(tmp_path / "on", wyoming_port=free_port())() as box:
        assert box.wyoming is not None
        answer = await _say(box.wyoming.port, "Hello!", "en", "01HABOX")
        assert answer.types[-2:] == ["handled", "handled-stop"]


async def test_a_full_queue_is_a_busy_sentence_and_the_waiting_turn_is_answered(
    data_dir: Path,
) -> None:
    # One slot, one queued request: a long generation holds the slot (its grammar cannot end
    # before 3000 characters), so of two turns sent together one waits and one is refused.
    box_of = _box(data_dir, n_parallel=1, queue_size=1, ctx_size=4096)
    async with box_of() as box:
        assert box.engine is not None
        hog = ChatRequest.of(
            [("user", "Write.")],
            sampling=Sampling(max_tokens=3500),
            grammar="root ::= ten{300}\nten ::= [a-z ]{10}",
        )
        holding = box.engine.stream(hog)
        assert isinstance(holding, AsyncGenerator)
        assert (await anext(holding)).finish_reason is None  # it holds the slot now
        agent = VoiceAgent(box.chat, max_tokens=MAX_TOKENS)
        async with open_wyoming(None, None, "127.0.0.1", 0, agent) as srv:
            turns = [
                asyncio.create_task(_say(srv.port, text, "en", key))
                for text, key in (("Hello!", "01HAQ1"), ("Good morning!", "01HAQ2"))
            ]
            done, waiting = await asyncio.wait(turns, return_when=asyncio.FIRST_COMPLETED)
            (refused,) = done
            assert refused.result().types == ["not-handled"]
            assert refused.result().not_handled.text == "The box is busy; try again in a moment."
            await holding.aclose()  # frees the slot: the queued turn runs
            (answered,) = waiting
            assert (await answered).types[-2:] == ["handled", "handled-stop"]


async def test_a_person_named_voice_is_not_answered_for(
    server: WyomingServer, runtime: Runtime
) -> None:
    # Whoever reaches the Wyoming port would talk as that person and hear their memories.
    person = await runtime.memory.create_user(VOICE_USER, "scrypt$not-a-real-hash")
    answer = await _say(server.port, "What do you remember about me?", "en", "01HAPERSON")
    assert answer.types == ["not-handled"]
    assert answer.not_handled.text == "The box's voice account cannot be used; its log says why."
    await runtime.chat.drain()
    assert await runtime.memory.list_conversations(person.id) == []
