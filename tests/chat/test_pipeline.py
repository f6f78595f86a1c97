"""The chat pipeline on a real Runtime: recall into the prompt, budget, language, persistence."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mongars_edge.chat.pipeline import Prepared, Turn
from mongars_edge.inference.engine import Message, Sampling, TokenEvent
from mongars_edge.inference.errors import PromptTooLongError
from mongars_edge.runtime import Runtime
from mongars_edge.settings import load_settings
from tests.support.server import TEST_SETTINGS


async def _user(runtime: Runtime, name: str = "ana") -> int:
    return (await runtime.memory.create_user(name, None)).id


def _turn(text: str, **kwargs: object) -> Turn:
    return Turn(messages=(Message("user", text),), sampling=Sampling(max_tokens=8), **kwargs)  # type: ignore[arg-type]


async def _drain(runtime: Runtime, prepared: Prepared) -> TokenEvent:
    """Stream a prepared turn to its end and wait until it is stored; its last event."""
    events = [e async for e in runtime.chat.stream(prepared)]
    await runtime.chat.drain()
    return events[-1]


async def test_recalled_memory_reaches_the_prompt_only_with_memory_on(runtime: Runtime) -> None:
    uid = await _user(runtime)
    other = await _user(runtime, "bob")
    await runtime.memory.add_memory(uid, "Ana's cat is named Biscuit.")
    await runtime.memory.add_memory(other, "Bob's cat is named Pixel.")
    prepared = await runtime.chat.prepare(_turn("What is my cat's name?"), uid)
    system, last = prepared.request.messages[0], prepared.request.messages[-1]
    assert system.role == "system" and "Biscuit" not in system.content
    assert last.role == "user" and last.content.endswith("What is my cat's name?")
    assert "Biscuit" in last.content
    assert "Pixel" not in last.content
    assert prepared.recalled >= 1
    private = await runtime.chat.prepare(_turn("What is my cat's name?", memory=False), uid)
    assert all("Biscuit" not in m.content for m in private.request.messages)
    assert private.request.messages[-1].content == "What is my cat's name?"


async def test_changing_recalls_keep_the_kv_prefix_of_the_conversation(runtime: Runtime) -> None:
    """Memories recalled for each new question do not reset the conversation's prompt prefix:
    the first question keeps the memories it was asked with, so the second turn reuses the
    whole first prompt's KV."""
    uid = await _user(runtime)
    await runtime.memory.add_memory(uid, "The user's cat is named Biscuit.")
    await runtime.memory.add_memory(uid, "The user's boat is called Marée Haute.")
    await runtime.memory.flush_vectors()
    first = await runtime.chat.prepare(
        Turn(
            messages=(Message("user", "Tell me about my cat."),),
            sampling=Sampling(max_tokens=8, temperature=0.0),
            new_conversation=True,
        ),
        uid,
    )
    done = await _drain(runtime, first)
    assert done.usage is not None
    second = await runtime.chat.prepare(
        Turn(
            messages=(Message("user", "And what about my boat?"),),
            sampling=Sampling(max_tokens=8, temperature=0.0),
            conversation_id=first.conversation_id,
        ),
        uid,
    )
    assert "Marée Haute" in second.request.messages[-1].content
    assert "Biscuit" in first.request.messages[-1].content
    assert second.request.messages[1] == first.request.messages[-1]
    stored = await runtime.memory.get_messages(uid, first.conversation_id or 0)
    assert stored[0].content == "Tell me about my cat."  # what the user typed
    final = await _drain(runtime, second)
    assert final.usage is not None
    assert final.usage.cached_tokens >= done.usage.prompt_tokens


async def test_language_follows_the_user(runtime: Runtime) -> None:
    uid = await _user(runtime)
    fr = await runtime.chat.prepare(_turn("Peux-tu m'expliquer les marées?"), uid)
    en = await runtime.chat.prepare(_turn("Can you explain the tides?"), uid)
    assert fr.lang == "fr" and "français" in fr.request.messages[0].content
    assert en.lang == "en" and "English" in en.request.messages[0].content
    unclear = await runtime.chat.prepare(_turn("ok", preferred_lang="en"), uid)
    assert unclear.lang == "en"


async def test_long_history_is_trimmed_from_the_oldest(runtime: Runtime) -> None:
    uid = await _user(runtime)
    history = []
    for i in range(80):
        history.append(Message("user", f"Question {i}: " + "tell me about rivers " * 10))
        history.append(Message("assistant", f"Answer {i}: " + "rivers flow to the sea " * 10))
    history.append(Message("user", "And the last question?"))
    turn = Turn(messages=tuple(history), sampling=Sampling(max_tokens=64), memory=False)
    prepared = await runtime.chat.prepare(turn, uid)
    kept = prepared.request.messages
    assert prepared.trimmed > 0
    assert kept[-1].content == "And the last question?"
    assert kept[1].role == "user"
    engine = runtime.chat_engine()
    prompt = engine.render(kept)
    assert engine.count_tokens(prompt) + prepared.request.sampling.max_tokens <= engine.info.n_ctx


async def test_a_message_larger_than_the_context_is_refused(runtime: Runtime) -> None:
    uid = await _user(runtime)
    with pytest.raises(PromptTooLongError):
        await runtime.chat.prepare(_turn("word " * 5000), uid)


async def test_turns_are_stored_complete_or_partial(runtime: Runtime) -> None:
    uid = await _user(runtime)
    done = await runtime.chat.prepare(_turn("Say hello.", new_conversation=True), uid)
    assert done.conversation_id is not None
    events = [e async for e in runtime.chat.stream(done)]
    assert events[-1].finish_reason in ("stop", "length")
    await runtime.chat.drain()
    stored = await runtime.memory.get_messages(uid, done.conversation_id)
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "complete")]
    assert stored[1].content == "".join(e.text for e in events)

    long_turn = Turn(
        messages=(Message("user", "Tell me a long story."),),
        sampling=Sampling(max_tokens=300),
        conversation_id=done.conversation_id,
    )
    cut = await runtime.chat.prepare(long_turn, uid)
    stream = runtime.chat.stream(cut)
    async for _event in stream:
        break
    await stream.aclose()
    await runtime.chat.drain()
    stored = await runtime.memory.get_messages(uid, done.conversation_id)
    assert [m.status for m in stored] == ["complete", "complete", "complete", "partial"]

    again = await runtime.chat.prepare(
        Turn(messages=(), conversation_id=done.conversation_id, regenerate=True), uid
    )
    assert again.request.messages[-1].content == "Tell me a long story."
    async for _event in runtime.chat.stream(again):
        pass
    await runtime.chat.drain()
    stored = await runtime.memory.get_messages(uid, done.conversation_id)
    assert [m.role for m in stored][-2:] == ["assistant", "assistant"]


async def test_a_follow_up_sent_as_the_reply_ends_sees_the_turn_before(runtime: Runtime) -> None:
    """A turn is stored after its stream ends; a client that sends the next turn the moment
    the reply ends (an API client, a quick voice follow-up) must still have it in its history."""
    uid = await _user(runtime)
    turn = await runtime.chat.prepare(_turn("Say hello.", new_conversation=True), uid)
    conversation = turn.conversation_id
    asked = ["Say hello."]
    for question in ("And again?", "Once more?", "And now?"):
        # The database is slow to write (an SD card's commit, the vectors of an earlier
        # turn): the turn's store waits behind this one.
        slow = asyncio.ensure_future(runtime.memory._writer.run(lambda _c: time.sleep(0.3)))
        [e async for e in runtime.chat.stream(turn)]  # no drain: the store is still to come
        turn = await runtime.chat.prepare(_turn(question, conversation_id=conversation), uid)
        await slow
        said = [m.content for m in turn.request.messages if m.role == "user"]
        assert [s.rsplit("\n", 1)[-1] for s in said] == [*asked, question]
        assert [m.role for m in turn.request.messages[1:]] == ["user", "assistant"] * len(asked) + [
            "user"
        ]
        asked.append(question)
    await runtime.chat.drain()


async def test_style_is_learned_from_turns(runtime: Runtime) -> None:
    uid = await _user(runtime)
    for text in ("salut tu vas bien?", "ok cool pis toi", "lol tu niaises"):
        prepared = await runtime.chat.prepare(_turn(text), uid)
        async for _event in runtime.chat.stream(prepared):
            pass
    await runtime.chat.drain()
    await asyncio.sleep(0)
    prepared = await runtime.chat.prepare(_turn("Tu connais une bonne recette?"), uid)
    assert "Tutoie la personne." in prepared.request.messages[0].content


async def test_statements_become_memories_after_the_turn(runtime: Runtime) -> None:
    uid = await _user(runtime)
    turn = _turn("Salut! J'habite à Rimouski et je suis allergique aux arachides.")
    prepared = await runtime.chat.prepare(replace(turn, new_conversation=True), uid)
    async for _event in runtime.chat.stream(prepared):
        pass
    await runtime.chat.drain()
    texts = [m.text for m in await runtime.memory.list_memories(uid)]
    assert "J'habite à Rimouski." in texts
    assert any("arachides" in t for t in texts)
    # The next question recalls it into the prompt.
    later = await runtime.chat.prepare(_turn("Où est-ce que j'habite?"), uid)
    assert "Rimouski" in later.request.messages[-1].content


async def test_a_fact_told_as_a_reply_ends_is_recalled_in_a_new_conversation(
    runtime: Runtime,
) -> None:
    """A new conversation started the moment the last reply ends (the API client of
    tests/integration/test_small_model.py) recalls what that turn told: its memories are
    written after the stream ends, and the recall waits for them."""
    uid = await _user(runtime)
    told = await runtime.chat.prepare(
        _turn("Mon chien s'appelle Caramel.", new_conversation=True), uid
    )
    # The database is slow to write: the turn's store waits behind this one.
    slow = asyncio.ensure_future(runtime.memory._writer.run(lambda _c: time.sleep(0.3)))
    [e async for e in runtime.chat.stream(told)]  # no drain: the store is still to come
    asked = await runtime.chat.prepare(
        _turn("Comment s'appelle mon chien?", new_conversation=True), uid
    )
    await slow
    assert asked.conversation_id != told.conversation_id
    assert "Caramel" in asked.request.messages[-1].content
    assert asked.recalled >= 1
    await runtime.chat.drain()


async def test_a_conversation_keeps_the_style_it_started_with(runtime: Runtime) -> None:
    """The style book learns from every message; a conversation's system message does not
    change under it (that would drop the KV prefix of every earlier turn), a new one follows."""
    uid = await _user(runtime)
    casual = ["salut, ça va?", "ok cool, pis toi?", "lol ouin, chu tanné", "tsé, faque pis"]
    first = await runtime.chat.prepare(_turn(casual[0], new_conversation=True), uid)
    await _drain(runtime, first)
    systems = {first.request.messages[0].content}
    for text in casual[1:]:
        later = await runtime.chat.prepare(_turn(text, conversation_id=first.conversation_id), uid)
        await _drain(runtime, later)
        systems.add(later.request.messages[0].content)
    assert len(systems) == 1
    fresh = await runtime.chat.prepare(_turn("salut!", new_conversation=True), uid)
    assert fresh.request.messages[0].content != first.request.messages[0].content


async def test_a_model_too_small_for_the_persona_keeps_its_own_system_message(
    tmp_path: Path,
) -> None:
    """The catalog runs the 135M without the persona (bench/quality.py: 1-2 of 12 with it, 4
    without); the `persona` setting overrides the catalog either way."""
    settings = {**TEST_SETTINGS, "data_dir": tmp_path / "data", "persona": "auto"}
    async with Runtime(load_settings(environ={}, cli=settings)) as runtime:
        user = await _user(runtime)
        turn = Turn(messages=(Message("user", "What is the capital of Canada?"),), memory=False)
        prepared = await runtime.chat.prepare(turn, user)
        rendered = runtime.engine.render(prepared.request.messages)  # type: ignore[union-attr]
        assert [m.role for m in prepared.request.messages] == ["user"]
        assert "monGARS" not in rendered and "SmolLM" in rendered  # the template's own
        runtime.settings = replace(runtime.settings, persona="on")
        turn = Turn(messages=(Message("user", "Quelle heure est-il?"),), memory=False)
        prepared = await runtime.chat.prepare(turn, user)
        system = prepared.request.messages[0]
        assert system.role == "system" and "monGARS" in system.content
