"""The split host on the embedded 135M: a real ggml RPC worker in a subprocess, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mongars_edge.hardware import probe, profile_for
from mongars_edge.inference.engine import ChatRequest, Sampling, complete
from mongars_edge.inference.errors import EngineClosedError, ModelTooBigError
from mongars_edge.inference.llama import EngineConfig, LlamaEngine
from mongars_edge.inference.local import LocalEngine
from mongars_edge.inference.manager import ModelManager
from mongars_edge.settings import load_settings
from mongars_edge.split.host import SplitEngine, SplitLostError
from mongars_edge.split.plan import Offer, SplitPlan, plan_split
from mongars_edge.split.rpc import RpcVersionError, SplitError
from mongars_edge.split.select import Splitter, direct_offers
from mongars_edge.split.worker import RpcWorker
from tests.inference.gen_models import smollm2_path
from tests.support.env import free_port
from tests.support.rpcserver import GuardedRelay, Relay, Worker, worker

pytestmark = pytest.mark.model
SYSROOT = Path(__file__).resolve().parents[1] / "fixtures" / "sysroots" / "x86-vm-amx"


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return smollm2_path()


_REQUEST = ChatRequest.of(
    [("user", "Name three colours of the rainbow.")], sampling=Sampling.greedy(24)
)


def _config(path: Path) -> EngineConfig:
    return EngineConfig(
        model_path=path,
        model_id="smollm2-135m-instruct",
        n_ctx=512,
        n_parallel=1,
        n_threads=1,
        n_threads_batch=1,
        n_batch=128,
        n_ubatch=128,
        cache_slots=0,
        prefix_cache=False,
    )


def _plan(endpoint: str, remote_layers: int = 15) -> SplitPlan:
    # The 135M has 30 layers: ask for a split with the given number of layers away.
    per = 10 << 20
    return plan_split(
        "smollm2-135m-instruct",
        30,
        300,
        (30 - remote_layers) * 10,
        [Offer(endpoint, remote_layers * per, name="worker")],
    )


@contextlib.asynccontextmanager
async def _split(path: Path, endpoint: str, **kwargs: Any) -> AsyncIterator[SplitEngine]:
    async with SplitEngine.open(_config(path), _plan(endpoint), **kwargs) as engine:
        yield engine


async def _local_text(path: Path) -> str:
    async with LlamaEngine.open(_config(path)) as engine:
        return (await complete(engine, _REQUEST)).text


async def test_split_greedy_output_is_the_local_one(smollm2: Path) -> None:
    local = await _local_text(smollm2)
    with worker() as w:
        async with _split(smollm2, w.endpoint) as engine:
            assert engine.plan.n_remote_layers == 15
            done = await complete(engine, _REQUEST)
            place = engine.placement()
    assert done.finish_reason in ("stop", "length"), done.error
    assert done.text == local
    assert place["state"] == "serving"
    assert [p["layers"] for p in place["places"]] == [15, 15]


async def test_the_output_head_stays_here_so_no_logits_cross_the_link(smollm2: Path) -> None:
    # llama.cpp counts the output layer among the offloaded ones and would put it, and the
    # logits buffer, on the last worker: the split keeps it here, so the vocabulary's logits
    # (49152 floats a token) never come back over the link. Measured: 252 KB a token with the
    # head on the worker, 60 KB (hidden states and the graph's replies) with it here.
    local = await _local_text(smollm2)
    with worker() as w:
        relay = Relay(w.endpoint)
        await relay.start()
        try:
            async with SplitEngine.open(_config(smollm2), _plan(relay.endpoint, 30)) as engine:
                assert engine.plan.n_remote_layers == 30
                before = relay.down
                done = await complete(engine, _REQUEST)
                down = relay.down - before
        finally:
            await relay.stop()
    assert done.text == local
    assert done.usage is not None and done.usage.completion_tokens > 4
    assert down / done.usage.completion_tokens < 49152 * 4 / 2, down


async def test_a_lost_worker_fails_its_request_and_the_split_resumes(smollm2: Path) -> None:
    local = await _local_text(smollm2)
    with worker() as w:
        async with _split(smollm2, w.endpoint, retry_s=0.2) as engine:
            long = ChatRequest.of([("user", "Count to 200.")], sampling=Sampling.greedy(400))
            stream = engine.stream(long)
            first = await anext(stream)
            assert first.finish_reason is None
            w.kill()  # mid-generation: ggml aborts the child
            with pytest.raises(SplitLostError, match="lost"):
                async for _event in stream:
                    pass
            # The box keeps serving: this request is refused with the numbers, not hung.
            with pytest.raises(SplitLostError, match=r"needs ~300 MiB and this box holds 150 MiB"):
                await complete(engine, _REQUEST)
            assert engine.placement()["state"] == "lost"
            w.start()
            async with asyncio.timeout(120):
                await engine.wait_serving()
            done = await complete(engine, _REQUEST)
            assert engine.losses == 1
    assert done.text == local


async def test_while_lost_a_fallback_engine_answers(smollm2: Path) -> None:
    async with LlamaEngine.open(_config(smollm2)) as fallback:
        with worker() as w:
            async with _split(smollm2, w.endpoint, fallback=fallback, retry_s=60) as engine:
                w.kill()
                async with asyncio.timeout(60):
                    while engine.serving:
                        with contextlib.suppress(SplitError):
                            await complete(engine, _REQUEST)
                done = await complete(engine, _REQUEST)
    assert done.finish_reason in ("stop", "length")
    assert done.text


async def test_a_worker_that_lies_about_its_memory_is_refused_cleanly(smollm2: Path) -> None:
    with worker(lying=True) as w:
        with pytest.raises(SplitError, match="could not be loaded across worker"):
            async with _split(smollm2, w.endpoint):
                pass
        assert w.proc is not None and w.proc.poll() is None  # the worker lives on


async def test_a_link_that_drops_mid_load_is_a_clear_error(smollm2: Path) -> None:
    with worker() as w:
        relay = Relay(w.endpoint, cut_after=2 << 20)
        await relay.start()
        try:
            with pytest.raises(SplitError, match="could not be loaded across worker"):
                async with SplitEngine.open(_config(smollm2), _plan(relay.endpoint)):
                    pass
        finally:
            await relay.stop()
        assert relay.cut


async def _fake_worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # The HELLO of an RPC server from another llama.cpp build: protocol 6.1.0.
    await reader.readexactly(1 + 8 + 24)
    writer.write((28).to_bytes(8, "little") + bytes([6, 1, 0, 0]) + bytes(24))
    await writer.drain()
    writer.close()


async def test_a_worker_of_another_llama_build_is_refused_naming_both(smollm2: Path) -> None:
    server = await asyncio.start_server(_fake_worker, "127.0.0.1", 0)
    endpoint = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        with pytest.raises(RpcVersionError, match=r"protocol 6\.1\.0, this box 7\.0\.0"):
            async with _split(smollm2, endpoint):
                pass
    finally:
        server.close()
        await server.wait_closed()


def _manager(data_dir: Path, workers: tuple[str, ...], budget_mb: int) -> ModelManager:
    facts = probe(SYSROOT, quiet=True)
    settings = load_settings(
        environ={},
        cli={
            "data_dir": data_dir,
            "model": "smollm2-135m-instruct",
            "n_threads": 1,
            "ctx_size": 512,
            "n_parallel": 1,
            "model_budget_mb": budget_mb,
            "split_workers": workers,
        },
    )
    manager = ModelManager(settings, profile_for(facts), facts, data_dir, LocalEngine())
    manager.splitter = Splitter([direct_offers(settings.split_workers)])
    return manager


async def test_a_model_over_the_budget_runs_split_when_a_worker_offers(
    data_dir: Path, smollm2: Path
) -> None:
    local = await _local_text(smollm2)
    with worker() as w:
        manager = _manager(data_dir, (w.endpoint,), 200)
        try:
            await manager.load("smollm2-135m-instruct")
            held = manager.local.engine
            assert isinstance(held, SplitEngine)
            place = held.placement()
            done = await complete(manager.local, _REQUEST)
        finally:
            await manager.local.close()
    assert place["state"] == "serving"
    here, there = place["places"]
    assert here["where"] == "local" and here["budget_mb"] == 200
    assert there["endpoint"] == w.endpoint and here["layers"] + there["layers"] == 30
    assert done.text == local


async def test_with_no_worker_answering_a_model_over_the_budget_is_refused(
    data_dir: Path,
) -> None:
    with worker() as w:
        endpoint = w.endpoint
    manager = _manager(data_dir, (endpoint,), 200)
    with pytest.raises(ModelTooBigError, match=r"budget is 200 MiB \(the model_budget_mb"):
        await manager.load("smollm2-135m-instruct")
    assert not manager.local.loaded


async def test_through_a_guard_to_the_sandboxed_worker_killed_and_restarted(
    data_dir: Path, smollm2: Path, tmp_path: Path
) -> None:
    local = await _local_text(smollm2)
    sandboxed = RpcWorker(
        tmp_path / "cache", budget_bytes=300 << 20, threads=1, cache_max_bytes=1 << 30
    )
    await sandboxed.start()
    relay = GuardedRelay(sandboxed)
    await relay.start()
    try:
        # The manager asks the worker what it offers (its budget, through the guard) and splits.
        manager = _manager(data_dir, (relay.endpoint,), 200)
        await manager.load("smollm2-135m-instruct")
        held = manager.local.engine
        assert isinstance(held, SplitEngine)
        assert held.plan.remote[0].budget_mb == 300
        first = await complete(manager.local, _REQUEST)
        long = ChatRequest.of([("user", "Count to 200.")], sampling=Sampling.greedy(400))
        stream = manager.local.stream(long)
        await anext(stream)
        assert sandboxed.pid is not None
        os.kill(sandboxed.pid, signal.SIGKILL)  # the worker's child dies; RpcWorker restarts it
        with pytest.raises(SplitLostError):
            async for _event in stream:
                pass
        async with asyncio.timeout(180):
            await held.wait_serving()
        again = await complete(manager.local, _REQUEST)
        await manager.local.close()
    finally:
        await relay.stop()
        await sandboxed.stop()
    assert relay.refusals == []
    assert first.text == local and again.text == local


async def test_at_start_the_tiny_model_answers_until_the_worker_is_there(
    data_dir: Path, smollm2: Path, tmp_path: Path
) -> None:
    # A stray GGUF of "medium" tier needs ~644 MiB with 8192 tokens of context; the embedded
    # model (tiny tier) ~572 MiB: a 600 MiB budget holds the embedded one only.
    big = tmp_path / "big-smollm.gguf"
    big.symlink_to(smollm2)
    late = Worker(free_port())
    facts = probe(SYSROOT, quiet=True)
    settings = load_settings(
        environ={},
        cli={
            "data_dir": data_dir,
            "model": str(big),
            "n_threads": 1,
            "ctx_size": 8192,
            "n_parallel": 1,
            "model_budget_mb": 600,
            "split_workers": (late.endpoint,),
        },
    )
    manager = ModelManager(settings, profile_for(facts), facts, data_dir, LocalEngine())
    manager.splitter = Splitter([direct_offers(settings.split_workers)])
    manager.split_retry_s = 0.2
    try:
        await manager.start()
        assert manager.local.info.id == "smollm2-135m-instruct"
        (problem,) = manager.problems()
        assert problem.startswith(f"the chosen model {big} is not running yet (big-smollm needs")
        assert "smollm2-135m-instruct answers meanwhile" in problem
        await asyncio.to_thread(late.start)
        async with asyncio.timeout(180):
            while manager.local.info.id != "big-smollm":  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.1)
        assert isinstance(manager.local.engine, SplitEngine)
        assert manager.problems() == []
        done = await complete(manager.local, _REQUEST)
    finally:
        await manager.close()
        await manager.local.close()
        late.kill()
    assert done.finish_reason in ("stop", "length")


async def test_at_start_with_even_the_tiny_model_over_the_budget_nothing_answers_until_split(
    data_dir: Path, smollm2: Path
) -> None:
    local = await _local_text(smollm2)
    late = Worker(free_port())
    manager = _manager(data_dir, (late.endpoint,), 200)  # the embedded model needs ~300 MiB
    # No timed retry within the test: the worker's first offer is what starts the split.
    manager.split_retry_s, manager.split_poll_s = 3600, 0.2
    try:
        await manager.start()  # no worker yet: the box starts all the same, with no model
        with pytest.raises(EngineClosedError):
            _ = manager.local.engine
        (problem,) = manager.problems()
        assert problem.startswith("the chosen model smollm2-135m-instruct is not running yet")
        assert "no model answers meanwhile" in problem
        await asyncio.to_thread(late.start)
        async with asyncio.timeout(180):
            while not manager.local.loaded:  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.1)
        assert isinstance(manager.local.engine, SplitEngine)
        assert manager.problems() == []
        done = await complete(manager.local, _REQUEST)
    finally:
        await manager.close()
        await manager.local.close()
        late.kill()
    assert done.text == local
