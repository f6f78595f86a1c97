"""The in-RAM exact index gives the same neighbours as vec0 and follows this process's writes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mongars_edge.memory.store import MemoryStore
from mongars_edge.memory.vcache import VectorCache, best_k

TEXTS = [
    "Mon chien s'appelle Rex.",
    "I prefer green tea.",
    "J'habite à Lévis.",
    "My sister lives in Toronto.",
    "Je joue du piano le dimanche.",
    "I am allergic to shellfish.",
    "Mon anniversaire est le 3 mars.",
    "I work as a nurse at the hospital.",
]
QUESTIONS = ["comment s'appelle mon chien", "what do I drink", "où est-ce que j'habite", "music"]


async def _ranks(store: MemoryStore, user_id: int) -> list[list[tuple[int | None, str]]]:
    out = []
    for question in QUESTIONS:
        hits = await store.recall(user_id, question, limit=8, sources=("memory",))
        out.append(sorted((h.vector_rank, h.text) for h in hits))
    return out


async def test_cache_matches_vec0_and_follows_writes(store: MemoryStore) -> None:
    alice = await store.create_user("alice")
    bob = await store.create_user("bob")
    for text in TEXTS:
        await store.add_memory(alice.id, text, "fact")
    await store.add_memory(bob.id, "Bob's dog is called Max.", "fact")
    store.vcache = VectorCache(min_rows=10**9)  # vec0 only
    from_vec0 = await _ranks(store, alice.id)
    store.vcache = VectorCache(min_rows=1)
    from_cache = await _ranks(store, alice.id)
    assert from_cache == from_vec0
    assert ("memories", alice.id) in store.vcache._entries

    # A memory written after the cache was built is found through it.
    added = await store.add_memory(alice.id, "Ma voiture est une Tesla rouge.", "fact")
    hits = await store.recall(alice.id, "quelle voiture", sources=("memory",))
    assert hits[0].id == added.id
    assert hits[0].vector_rank == 1
    # Deleted rows vanish even while the cache still holds their vectors.
    await store.delete_memory(alice.id, added.id)
    hits = await store.recall(alice.id, "quelle voiture", sources=("memory",))
    assert added.id not in [h.id for h in hits]
    # Bob never sees Alice's rows through the cache, and deleting Alice drops her matrices.
    assert [h.text for h in await store.recall(bob.id, "chien", sources=("memory",))] == [
        "Bob's dog is called Max."
    ]
    await store.delete_user(alice.id)
    assert all(key[1] != alice.id for key in store.vcache._entries)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 20_000),
    k=st.integers(1, 300),
    levels=st.integers(1, 1000),
    seed=st.integers(0, 2**32 - 1),
)
def test_best_k_is_the_exact_top_k(n: int, k: int, levels: int, seed: int) -> None:
    """The threshold shortcut never loses one of the k best, ties included (few levels)."""
    rng = np.random.default_rng(seed)
    scores = (rng.integers(0, levels, n) / levels).astype(np.float32)
    k = min(k, n)
    got = best_k(scores, k)
    assert len(got) == k == len(set(got.tolist()))
    want = np.sort(scores)[::-1][:k]
    assert np.array_equal(scores[got], want)


def test_best_k_on_a_large_partition() -> None:
    """100k scores (the threshold path) with and without ties give the exact top k."""
    rng = np.random.default_rng(3)
    for scores in (rng.standard_normal(100_000).astype(np.float32), np.ones(100_000, np.float32)):
        for k in (1, 10, 30, 300):
            got = best_k(scores, k)
            assert np.array_equal(scores[got], np.sort(scores)[::-1][:k])
