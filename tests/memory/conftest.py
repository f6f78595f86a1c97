"""Memory fixtures: one real embedder per session (the shipped default, multilingual-e5-small on
ONNX Runtime), a fresh real database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mongars_edge.memory.embed import OnnxE5Embedder, ThreadedEmbedder
from mongars_edge.memory.store import MemoryStore


@pytest.fixture(scope="session")
def embedder() -> Iterator[ThreadedEmbedder]:
    model = OnnxE5Embedder()
    model.wait_loaded()  # before any test's event loop runs
    yield model
    if model._thread is not None:
        model._jobs.put((-1, -1, None))
        model._thread.join()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "mongars.db"


@pytest.fixture
async def store(db_path: Path, embedder: ThreadedEmbedder) -> AsyncIterator[MemoryStore]:
    async with MemoryStore.open(db_path, embedder) as opened:
        yield opened
