"""Extraction (rules, then the real SmolLM2) and sleep-time consolidation that yields to users."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from mongars_edge.memory.consolidate import ActivityTracker, MemoryWorker, Yielded, yielding
from mongars_edge.memory.extract import parse_model_output, rule_candidates
from mongars_edge.memory.store import MemoryStore

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed in this venv")

from tests.memory.smol import SmolGenerate


@pytest.fixture(scope="module")
def smol() -> Iterator[SmolGenerate]:
    model = SmolGenerate(max_tokens=32)
    yield model
    model.llm.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Bonjour, je m'appelle Alice et j'aime le thé vert.",
            [("Je m'appelle Alice.", "fact"), ("J'aime le thé vert.", "preference")],
        ),
        (
            "My name is Bob. I prefer tea to coffee, but my wife likes coffee.",
            [("My name is Bob.", "fact"), ("I prefer tea to coffee.", "preference")],
        ),
        ("Je suis allergique aux arachides.", [("Je suis allergique aux arachides.", "fact")]),
        ("I live in Lyon", [("I live in Lyon.", "fact")]),
        ("Mon plat préféré est la poutine!", [("Mon plat préféré est la poutine.", "preference")]),
        ("Est-ce que j'aime le thé ?", []),
        ("Quelle heure est-il?", []),
        ("", []),
    ],
)
def test_rules_catch_explicit_statements(text: str, expected: list[tuple[str, str]]) -> None:
    assert [(c.text, c.kind) for c in rule_candidates(text)] == expected


def test_model_lines_must_come_from_the_user_message() -> None:
    output = "fact: I live in Lyon\npreference: I prefer tea\nfact: I am an astronaut\nnone\n"
    found = parse_model_output(output, "I live in Lyon and I prefer tea to coffee.")
    assert [c.text for c in found] == ["I live in Lyon.", "I prefer tea."]


class _Switch:
    """An IdleSignal driven by the test (the real one is ActivityTracker)."""

    def __init__(self) -> None:
        self.busy = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    def is_idle(self) -> bool:
        return self.idle.is_set()

    async def wait_idle(self) -> None:
        await self.idle.wait()

    async def wait_busy(self) -> None:
        await self.busy.wait()


async def test_after_turn_rules_now_model_later_no_duplicates(
    store: MemoryStore, smol: SmolGenerate
) -> None:
    alice = await store.create_user("alice")
    conv = await store.create_conversation(alice.id)
    worker = MemoryWorker(store, smol, _Switch())
    text = "Bonjour, je m'appelle Alice et j'habite à Québec."
    first, _ = await store.add_turn(alice.id, conv.id, text, "Enchanté !")
    made = await worker.after_turn(alice.id, first)
    assert [m.text for m in made] == ["Je m'appelle Alice.", "J'habite à Québec."]
    again, _ = await store.add_turn(alice.id, conv.id, text, "Oui, je sais.")
    await worker.after_turn(alice.id, again)
    memories = await store.list_memories(alice.id)
    assert len(memories) == 2  # the same statements merged, sources from both messages
    assert all(m.source_message_ids == (first.id, again.id) for m in memories)
    assert await worker.pending_jobs() == 2
    assert await worker.step()  # the model reads one queued message
    assert await worker.step()
    assert await worker.pending_jobs() == 0
    source_words = set(text.lower().replace(",", " ").replace(".", " ").split())
    for memory in await store.list_memories(alice.id):
        assert memory.user_id == alice.id
        assert any(w in source_words for w in memory.text.lower().split())


async def test_sleep_summarises_old_conversations(store: MemoryStore, smol: SmolGenerate) -> None:
    alice = await store.create_user("alice")
    conv = await store.create_conversation(alice.id, "vacances")
    await store.add_turn(
        alice.id, conv.id, "I am planning a trip to Japan in April with my sister.",
        "That sounds lovely! Cherry blossoms bloom in early April.",
    )  # fmt: skip
    worker = MemoryWorker(store, smol, _Switch(), consolidate_after_s=3600)
    assert not await worker.step()  # too recent to summarise
    await store._writer.run(
        lambda conn: conn.execute("UPDATE conversations SET updated = ?", (time.time() - 7200,))
    )
    assert await worker.step()
    summaries = await store.list_memories(alice.id, kind="summary")
    assert len(summaries) == 1
    assert len(summaries[0].source_message_ids) == 2
    assert not await worker.step()  # nothing left: the conversation is marked as done


async def test_sleep_yields_the_moment_a_request_arrives(
    store: MemoryStore, smol: SmolGenerate
) -> None:
    alice = await store.create_user("alice")
    conv = await store.create_conversation(alice.id)
    switch = _Switch()
    worker = MemoryWorker(store, smol, switch)
    user_msg, _ = await store.add_turn(alice.id, conv.id, "I prefer trains to planes.", "Noted.")
    await worker.after_turn(alice.id, user_msg)
    completed = smol.completed
    smol.first_token.clear()
    smol.gate.clear()  # the generation holds after its first token: surely in flight
    try:
        step = asyncio.create_task(worker.step())
        assert await asyncio.to_thread(smol.first_token.wait, 60)
        switch.idle.clear()
        switch.busy.set()
        with pytest.raises(Yielded):
            await asyncio.wait_for(step, 30)  # a worker that waited would time out here
    finally:
        smol.gate.set()
    assert smol.completed == completed  # it yielded without waiting for the generation
    assert smol.cancelled >= 1
    assert await worker.pending_jobs() == 1  # still queued: it runs again when idle


async def test_activity_tracker_is_an_idle_signal() -> None:
    tracker = ActivityTracker(idle_after_s=0.05)
    assert not tracker.is_idle()
    await asyncio.wait_for(tracker.wait_idle(), 2)
    assert tracker.is_idle()

    async def slow() -> str:
        await asyncio.sleep(10)
        return "never"

    async def arrive() -> None:
        await asyncio.sleep(0.05)
        with tracker.request():
            await asyncio.sleep(0.05)

    arrival = asyncio.create_task(arrive())
    with pytest.raises(Yielded):
        await yielding(tracker, slow())
    await arrival
    assert await yielding(tracker, asyncio.sleep(0, result="done")) == "done"


async def test_running_worker_picks_up_new_messages_without_a_hook(store: MemoryStore) -> None:
    alice = await store.create_user("alice")
    conv = await store.create_conversation(alice.id)
    async with MemoryWorker(store).running():  # rules only: no model, no idle signal needed
        await store.add_turn(alice.id, conv.id, "My name is Alice and I live in Lyon.", "Hi!")
        for _ in range(400):
            if len(await store.list_memories(alice.id)) == 2:
                break
            await asyncio.sleep(0.025)
    texts = sorted(m.text for m in await store.list_memories(alice.id))
    assert texts == ["I live in Lyon.", "My name is Alice."]


async def test_worker_stops_when_told_as_it_is_woken(store: MemoryStore) -> None:
    """Stopping must win over a wake-up that lands in the same instant (Python 3.11's
    wait_for used to swallow that cancellation and the worker never stopped)."""

    async def wake_and_stop() -> None:
        worker = MemoryWorker(store)
        async with worker.running():
            await asyncio.sleep(0.05)  # the loop is waiting for its next wake-up
            worker._wake.set()

    stopping = asyncio.create_task(wake_and_stop())
    done, _ = await asyncio.wait({stopping}, timeout=10)
    assert stopping in done, "the worker did not stop"


class _Counts:
    """Shaped like the inference scheduler's idle signal: queued and running request counts."""

    def __init__(self) -> None:
        self.depth = 0
        self.active = 0

    def is_idle(self) -> bool:
        return self.depth + self.active == 0

    async def wait_idle(self) -> None:
        raise NotImplementedError

    async def wait_busy(self) -> None:
        raise NotImplementedError


async def test_worker_yields_to_users_not_to_its_own_requests(store: MemoryStore) -> None:
    counts = _Counts()

    async def generate(prompt: str) -> str:
        counts.active += 1  # our request runs on the same scheduler as users' requests
        try:
            await asyncio.sleep(3600)
            return ""
        finally:
            counts.active -= 1

    worker = MemoryWorker(store, generate, counts)
    signal = worker._idle()
    work = asyncio.create_task(yielding(signal, worker._generate("x")))
    await asyncio.sleep(0.2)
    assert not work.done()  # our own running request did not make the worker yield
    assert signal.is_idle()
    counts.depth = 1  # a user's request arrives
    with pytest.raises(Yielded):
        await work
    assert counts.active == 0


async def test_running_worker_reads_queued_messages_once_the_box_is_quiet(
    store: MemoryStore, smol: SmolGenerate
) -> None:
    alice = await store.create_user("alice")
    conv = await store.create_conversation(alice.id)
    switch = _Switch()
    worker = MemoryWorker(store, smol, switch, idle_grace_s=0.05)
    async with worker.running():
        await store.add_turn(alice.id, conv.id, "I prefer trains to planes.", "Noted.")
        for _ in range(2400):
            if len(await store.list_memories(alice.id)) and not await worker.pending_jobs():
                break
            await asyncio.sleep(0.05)
    assert await worker.pending_jobs() == 0  # the model read the message
    texts = [m.text for m in await store.list_memories(alice.id)]
    assert "I prefer trains to planes." in texts
