"""When the embedding model fails, rows wait for a vector; nothing is ever made up."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from mongars_edge.memory import store as store_module
from mongars_edge.memory.embed import OnnxE5Embedder, ThreadedEmbedder
from mongars_edge.memory.errors import EmbeddingError
from mongars_edge.memory.store import MemoryStore


async def test_a_broken_model_leaves_rows_pending_then_they_are_embedded(
    db_path: Path, embedder: ThreadedEmbedder
) -> None:
    broken = OnnxE5Embedder("no-such-variant")  # there is no such model file
    async with MemoryStore.open(db_path, broken, background=False) as store:
        alice = await store.create_user("alice")
        memory = await store.add_memory(alice.id, "Mon chat s'appelle Minou.", "fact")
        assert not memory.embedded
        conv = await store.create_conversation(alice.id)
        await store.add_turn(alice.id, conv.id, "J'ai deux chats.", "Super !")
        with pytest.raises(EmbeddingError, match="no embedding model variant"):
            await store.flush_vectors()
        with pytest.raises(EmbeddingError):
            await store.recall(alice.id, "mon chat")
        assert await store.pending_vectors() == 3
        vectors = await store._readers.fetchone("SELECT count(*) FROM memories_vec")
        assert vectors[0] == 0  # no stand-in vector was written
    await broken.close()
    async with MemoryStore.open(db_path, embedder) as store:
        await store.flush_vectors()
        assert await store.pending_vectors() == 0
        hits = await store.recall(alice.id, "comment s'appelle mon chat", sources=("memory",))
        assert hits[0].id == memory.id
        assert hits[0].vector_rank == 1


class _Told(logging.Handler):
    """Collects one message's records; `enough` is set at the third."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.records: list[logging.LogRecord] = []
        self.enough = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.records.append(record)
            if len(self.records) >= 3:
                self.enough.set()


async def test_a_failing_embedder_is_told_once_while_it_keeps_failing(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_RETRY_S", 0.01)  # shrunk, not slept on
    told = _Told("rows wait for a vector")
    logger = logging.getLogger("mongars_edge.memory.store")
    monkeypatch.setattr(logger, "level", logging.DEBUG)
    logger.addHandler(told)
    broken = OnnxE5Embedder("no-such-variant")
    try:
        async with MemoryStore.open(db_path, broken) as store:
            alice = await store.create_user("alice")
            await store.add_memory(alice.id, "Mon chat s'appelle Minou.", "fact")
            async with asyncio.timeout(30):
                await told.enough.wait()
    finally:
        logger.removeHandler(told)
        await broken.close()
    levels = [r.levelname for r in told.records]
    assert levels[0] == "WARNING" and set(levels[1:]) == {"DEBUG"}
    assert told.records[1].exc_info is not None  # the repeats carry the traceback


async def test_queries_and_passages_use_their_e5_prefixes(embedder: ThreadedEmbedder) -> None:
    passage = await embedder.passages(["Le ciel est bleu."])
    query = await embedder.query("Le ciel est bleu.")
    assert passage.shape == (1, 384)
    assert query.shape == (384,)
    assert abs(float(np.linalg.norm(query)) - 1.0) < 1e-3
    assert not np.allclose(passage[0], query)  # "passage: " vs "query: "
    long = await embedder.passages(["mot " * 200_000])  # cut to 256 tokens, not minutes of work
    assert np.isfinite(long).all()
