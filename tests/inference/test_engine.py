"""The llama.cpp engine on the tiny generated model: streaming, limits, cancellation, batching."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mongars_edge.inference.engine import ChatRequest, Engine, Sampling, complete
from mongars_edge.inference.errors import (
    ChatTemplateMissingError,
    GrammarError,
    ModelLoadError,
    ModelNotFoundError,
    PromptTooLongError,
    QueueFullError,
)
from mongars_edge.inference.llama import LlamaEngine
from tests.support.types import EngineFactory


def ask(text: str, n: int = 24, **kwargs: object) -> ChatRequest:
    stop = kwargs.pop("stop", ())
    return ChatRequest.of([("user", text)], sampling=Sampling.greedy(n, stop=stop), **kwargs)  # type: ignore[arg-type]


async def until(predicate: object, what: str) -> None:
    """Poll a condition the worker thread changes (bounded by count, not by a clock)."""
    for _ in range(2000):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"never happened: {what}")


async def test_streams_tokens_and_finishes_with_usage(open_engine: EngineFactory) -> None:
    async with open_engine() as engine:
        assert isinstance(engine, Engine)
        events = [e async for e in engine.stream(ask("Hello", 12))]
        assert len(events) >= 12
        final = events[-1]
        assert final.finish_reason == "length"
        assert final.usage is not None
        assert final.usage.completion_tokens == 12
        assert final.usage.prompt_tokens > 5
        assert final.timings is not None
        assert final.timings.ttft_s > 0
        assert all(e.finish_reason is None for e in events[:-1])
        assert sum(1 for e in events if e.token_id is not None) == 12


async def test_greedy_is_deterministic_and_info_is_filled(open_engine: EngineFactory) -> None:
    async with open_engine() as engine:
        a = await complete(engine, ask("Tell me about cats", 20))
        b = await complete(engine, ask("Tell me about cats", 20))
        assert a.text == b.text
        assert a.token_ids == b.token_ids
        info = engine.info
        assert info.architecture == "llama"
        assert info.n_ctx == 2048
        assert "<|im_start|>" in info.chat_template
        prompt = engine.render(ask("hi").messages)
        assert prompt.endswith("<|im_start|>assistant\n")
        assert engine.count_tokens("hello world") == 2


async def test_stop_string_cuts_the_text(open_engine: EngineFactory) -> None:
    async with open_engine() as engine:
        full = await complete(engine, ask("Say something", 30))
        assert len(full.text) > 10
        stop = full.text[6:9]
        cut = await complete(engine, ask("Say something", 30, stop=(stop,)))
        assert cut.finish_reason == "stop"
        assert cut.text == full.text[: full.text.index(stop)]
        assert stop not in cut.text


async def test_cancelling_frees_the_slot(open_engine: EngineFactory) -> None:
    async with open_engine(n_parallel=1) as engine:
        stream = engine.stream(ask("Go on and on", 1000))
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        await until(lambda: engine.load().active == 0, "the slot to be freed")
        # The only slot is free again: the next request runs to its end.
        done = await complete(engine, ask("Next", 5))
        assert done.finish_reason == "length"


async def test_cancelled_task_frees_the_slot(open_engine: EngineFactory) -> None:
    async with open_engine(n_parallel=1) as engine:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.stream(ask("Go on", 1000)):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: engine.load().active == 0, "the slot to be freed")
        assert engine.scheduler.is_idle()


async def test_queue_full_is_typed_with_retry_hint(open_engine: EngineFactory) -> None:
    async with open_engine(n_parallel=1, queue_size=1) as engine:
        first = engine.stream(ask("one", 1000))
        await first.__anext__()
        await until(lambda: engine.load().active == 1, "the first request to run")
        second = engine.stream(ask("two", 5))
        second_task = asyncio.create_task(complete_stream(second))
        await until(lambda: engine.load().queue_depth == 1, "the second request to queue")
        with pytest.raises(QueueFullError) as info:
            await complete(engine, ask("three", 5))
        assert info.value.retry_after_s >= 1
        assert info.value.http_status == 429
        await first.aclose()  # type: ignore[attr-defined]
        text = await second_task
        assert text  # the queued one ran once the slot was free


async def complete_stream(stream: object) -> str:
    parts = [e.text async for e in stream]  # type: ignore[attr-defined]
    return "".join(parts)


async def test_concurrent_streams_match_sequential_runs(open_engine: EngineFactory) -> None:
    prompts = ["cats", "the weather in Montreal", "a long story about a dragon", "2+2"]
    async with open_engine() as engine:
        alone = [await complete(engine, ask(p, 24)) for p in prompts]
        together = await asyncio.gather(*(complete(engine, ask(p, 24)) for p in prompts))
        assert [c.token_ids for c in together] == [c.token_ids for c in alone]


async def test_long_prompt_prefills_in_chunks(
    open_engine: EngineFactory,
) -> None:
    long_text = " ".join(f"word{i}" for i in range(300))
    async with open_engine(n_batch=64, n_ubatch=64) as engine:
        alone = await complete(engine, ask(long_text, 8))
        runner = asyncio.create_task(complete(engine, ask("keep talking", 60)))
        await until(lambda: engine.load().active == 1, "the first stream")
        mixed = await complete(engine, ask(long_text, 8))
        assert mixed.token_ids == alone.token_ids
        assert (await runner).finish_reason == "length"


@pytest.mark.parametrize("prefix_ram_mb", [512, 0])
async def test_second_turn_reuses_the_prefix(
    open_engine: EngineFactory, prefix_ram_mb: int
) -> None:
    """A finished conversation's KV waits in host RAM, out of the cache's cells (a lone stream
    then attends only over its own), or in the cells with prefix_ram_mb=0; either way it comes
    back for the next turn, with the same greedy reply as a cold run."""
    import llama_cpp.llama_cpp as L

    async with open_engine(prefix_ram_mb=prefix_ram_mb) as engine:
        first = await complete(engine, ask("My name is Ana.", 10, conversation_id="c1"))
        worker = engine._worker
        assert worker is not None
        kept = [s for s in worker.slots if s.tokens]
        assert len(kept) == 1
        in_cells = L.llama_memory_seq_pos_max(worker.mem, kept[0].seq_id) >= 0
        assert in_cells == (prefix_ram_mb == 0)
        assert (kept[0].saved is not None) == (prefix_ram_mb > 0)
        turn2 = ChatRequest.of(
            [("user", "My name is Ana."), ("assistant", first.text), ("user", "And you?")],
            sampling=Sampling.greedy(10),
            conversation_id="c1",
        )
        second = await complete(engine, turn2)
        assert second.usage is not None
        assert second.usage.cached_tokens > 10
    async with open_engine() as fresh:
        cold = await complete(fresh, turn2)
        assert cold.usage is not None
        assert cold.usage.cached_tokens == 0
        assert cold.token_ids == second.token_ids


async def test_another_conversation_reuses_a_shared_prefix(open_engine: EngineFactory) -> None:
    """The KV of a shared system prompt is copied from the slot that holds it."""
    system = ("system", "You are a careful assistant who answers briefly. " * 8)

    def turn(question: str, conversation: str) -> ChatRequest:
        return ChatRequest.of(
            [system, ("user", question)], sampling=Sampling.greedy(8), conversation_id=conversation
        )

    async with open_engine() as engine:
        await complete(engine, turn("What is a river?", "a"))
        other = await complete(engine, turn("What is a lake?", "b"))
        assert other.usage is not None
        assert other.usage.cached_tokens > 50
    async with open_engine() as fresh:
        cold = await complete(fresh, turn("What is a lake?", "b"))
        assert cold.token_ids == other.token_ids


async def test_ten_idle_conversations_keep_their_prefixes(open_engine: EngineFactory) -> None:
    """Kept prefixes wait in host RAM, so a box keeps more idle conversations than it runs at
    once: ten conversations, then the second turn of each reuses its own first (with 4 slots
    and 4 kept, as before, the two oldest were cold again)."""
    names = ["Ana", "Ben", "Chloé", "Dan", "Élise", "Farid", "Gina", "Hugo", "Inès", "Jules"]
    async with open_engine() as engine:
        firsts = [
            await complete(engine, ask(f"My name is {name}.", 4, conversation_id=name))
            for name in names
        ]
        for name, first in zip(names, firsts, strict=True):
            second = await complete(
                engine,
                ChatRequest.of(
                    [("user", f"My name is {name}."), ("assistant", first.text), ("user", "Hi?")],
                    sampling=Sampling.greedy(2),
                    conversation_id=name,
                ),
            )
            assert second.usage is not None
            assert first.usage is not None
            assert second.usage.cached_tokens >= first.usage.prompt_tokens, name


async def test_prompt_longer_than_context_is_refused(open_engine: EngineFactory) -> None:
    async with open_engine(n_ctx=256) as engine:
        with pytest.raises(PromptTooLongError) as info:
            await complete(engine, ask("word " * 400))
        assert info.value.n_ctx == 256
        ok = await complete(engine, ask("short", 4))
        assert ok.finish_reason == "length"


async def test_generation_stops_at_the_end_of_the_context(open_engine: EngineFactory) -> None:
    async with open_engine(n_ctx=64) as engine:
        done = await complete(engine, ask("hi", 500))
        assert done.finish_reason == "length"
        assert done.usage is not None
        assert done.usage.prompt_tokens + done.usage.completion_tokens <= 64


async def test_grammar_constrains_the_output(open_engine: EngineFactory) -> None:
    async with open_engine() as engine:
        yes_no = await complete(engine, ask("Yes or no?", 8, grammar='root ::= "yes" | "no"'))
        assert yes_no.text in ("yes", "no")
        assert yes_no.finish_reason == "stop"
        schema = {
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "required": ["n"],
        }
        js = await complete(engine, ask("A number", 40, json_schema=schema))
        assert js.text.startswith('{"n"') or js.text.startswith('{ "n"')
        with pytest.raises(GrammarError):
            await complete(engine, ask("x", 4, grammar="root ::= ("))


async def test_deadline_cancels_a_running_request(open_engine: EngineFactory) -> None:
    async with open_engine(request_deadline_s=0.3, n_parallel=1) as engine:
        done = await complete(engine, ask("on and on", 100000))
        assert done.finish_reason == "cancelled"
        assert done.error == "deadline exceeded"


async def test_idle_signal(open_engine: EngineFactory) -> None:
    async with open_engine() as engine:
        sched = engine.scheduler
        assert sched.is_idle()
        await sched.wait_idle()
        busy = asyncio.create_task(sched.wait_busy())
        run = asyncio.create_task(complete(engine, ask("hi", 30)))
        await busy
        assert not sched.is_idle()
        await run
        await sched.wait_idle()
        assert sched.is_idle()


async def test_bad_model_files_give_typed_errors(
    open_engine: EngineFactory, models: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ModelNotFoundError):
        async with open_engine(model=tmp_path / "nope.gguf"):
            pass
    text = tmp_path / "text.gguf"
    text.write_text("not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        async with open_engine(model=text):
            pass
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(models["tiny"].read_bytes()[:3_000_000])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        async with open_engine(model=truncated):
            pass
    with pytest.raises(ChatTemplateMissingError):
        async with open_engine(model=models["tiny_no_template"]):
            pass
    # A template given by configuration makes such a model usable.
    async with open_engine(
        model=models["tiny_no_template"], chat_template="{{ messages[0]['content'] }}"
    ) as engine:
        assert (await complete(engine, ask("hi", 3))).finish_reason == "length"


async def test_engine_closed_refuses_requests(open_engine: EngineFactory) -> None:
    async with open_engine() as engine:
        kept: LlamaEngine = engine
    from mongars_edge.inference.errors import EngineClosedError

    with pytest.raises(EngineClosedError):
        await complete(kept, ask("hi", 3))


async def test_dropping_the_prefix_cache(open_engine: EngineFactory) -> None:
    async with open_engine() as engine:
        req = ask("Remember this sentence please.", 4, conversation_id="x")
        await complete(engine, req)
        warm = await complete(engine, req)
        assert warm.usage is not None
        assert warm.usage.cached_tokens > 0
        assert await engine.drop_prefix_cache() >= 1
        cold = await complete(engine, req)
        assert cold.usage is not None
        assert cold.usage.cached_tokens == 0


class _Beats:
    """Records what the watchdog would hear (telemetry.Watchdog has the same two methods)."""

    def __init__(self) -> None:
        self.busy = 0
        self.idle = 0

    def beat_inference(self) -> None:
        self.busy += 1

    def inference_idle(self) -> None:
        self.idle += 1


async def test_worker_beats_the_watchdog(models: dict[str, Path]) -> None:
    from mongars_edge.inference.llama import EngineConfig

    beats = _Beats()
    config = EngineConfig(model_path=models["tiny"], n_ctx=512, n_threads=1, n_threads_batch=1)
    async with LlamaEngine.open(config, heartbeat=beats) as engine:
        await complete(engine, ask("hi", 6))
        await until(lambda: beats.idle > 0, "an idle report")
    assert beats.busy >= 6
