"""When the embedding model fails, rows wait for a vector; nothing is ever made up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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


async def test_queries_and_passages_use_their_e5_prefixes(embedder: ThreadedEmbedder) -> None:
    passage = await embedder.passages(["Le ciel est bleu."])
    query = await embedder.query("Le ciel est bleu.")
    assert passage.shape == (1, 384)
    assert query.shape == (384,)
    assert abs(float(np.linalg.norm(query)) - 1.0) < 1e-3
    assert not np.allclose(passage[0], query)  # "passage: " vs "query: "
    long = await embedder.passages(["mot " * 200_000])  # cut to 256 tokens, not minutes of work
    assert np.isfinite(long).all()
