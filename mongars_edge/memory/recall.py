# ruff: noqa: S608 - SQL is composed only from our own table names; values are bound.
"""Hybrid recall: vector KNN (cosine) and FTS5 BM25, fused by reciprocal rank, then nudged by
importance and recency. Every query names the user: the vector tables are partitioned by user id
and every row is checked against it again.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from mongars_edge.errors import InvalidRequestError
from mongars_edge.memory.validate import clean_text

if TYPE_CHECKING:
    from mongars_edge.memory.store import MemoryStore

RRF_K: Final = 60  # the constant from Cormack et al.; damps the head of each list
_MAX_TERMS: Final = 32
_MAX_QUERY_CHARS: Final = 4000
_HALF_LIFE_DAYS: Final = 30.0
_W_RRF, _W_IMPORTANCE, _W_RECENCY = 0.8, 0.1, 0.1
_MESSAGE_IMPORTANCE: Final = 0.3  # a raw message counts less than a distilled memory
_WORD = re.compile(r"\w+", re.UNICODE)
# Function words match nearly every row; in an OR query they would drag unrelated rows into
# the full-text list (where rank fusion counts them as much as a real match).
_STOPWORD_TEXT: Final = """
a à au aux avec ce ces cette dans de des du elle elles en est et étaient était être il ils je j
la le les leur leurs lui ma mais me mes moi mon ne nous on ou où par pas pour qu que quel quelle
quels quelles qui quoi sa se ses son sont sur ta te tes toi ton tu un une vos votre vous y c d l
m n s t an and are as at be been but by can did do does for from had has have he her his how i
if in into is it its me my no not of on or our she so than that the their them then there these
they this to was we were what when where which who why will with you your
"""
_STOPWORDS: Final = frozenset(_STOPWORD_TEXT.split())


@dataclass(frozen=True)
class Hit:
    """One recalled item with its provenance and how it scored."""

    source: str  # "memory" or "message"
    id: int
    text: str
    kind: str  # memory kind, or message role
    conversation_id: int | None
    source_message_ids: tuple[int, ...]
    created: float
    updated: float
    importance: float
    score: float
    rrf: float
    recency: float
    vector_rank: int | None = None
    similarity: float | None = None
    text_rank: int | None = None
    bm25: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def fts_query(text: str) -> str | None:
    """FTS5 query from free text: each word quoted, OR-ed. Operators, quotes, NEAR, `*`, `(`
    and column filters become plain words (or vanish), so user text can neither break the
    MATCH syntax nor inject into it."""
    terms: list[str] = []
    for word in _WORD.findall(text):
        if word.casefold() in _STOPWORDS:
            continue
        if word not in terms:
            terms.append(word)
        if len(terms) == _MAX_TERMS:
            break
    if not terms:
        return None
    # \w never matches a double quote, so wrapping in quotes is a complete escape.
    return " OR ".join(f'"{t}"' for t in terms)


async def recall(
    store: MemoryStore,
    user_id: int,
    query: str,
    *,
    limit: int = 8,
    sources: tuple[str, ...] = ("memory", "message"),
    exclude_conversation: int | None = None,
) -> list[Hit]:
    query = clean_text(query, "query")[:_MAX_QUERY_CHARS]
    if limit < 1 or limit > 100:
        raise InvalidRequestError("limit must be between 1 and 100")
    if not query.strip():
        return []
    depth = max(20, limit * 3)
    match = fts_query(query)
    tables = [("memories", "memory"), ("messages", "message")]
    tables = [(table, source) for table, source in tables if source in sources]
    # The full-text searches do not wait for the query embedding: they run while it computes.
    text_jobs = [
        asyncio.ensure_future(_fts(store, table, source, user_id, match, depth))
        for table, source in tables
        if match is not None
    ]
    try:
        vector_jobs = []
        if store.embedder is not None:
            embedding = await store.embedder.query(query)
            vector = np.asarray(embedding, dtype=np.float32).tobytes()
            vector_jobs = [
                _knn(store, table, source, user_id, vector, depth) for table, source in tables
            ]
        results = await asyncio.gather(*vector_jobs, *text_jobs)
    finally:
        for job in text_jobs:
            job.cancel()
        await asyncio.gather(*text_jobs, return_exceptions=True)
    ranked: dict[tuple[str, int], dict[str, Any]] = {}
    for kind, source, ids_scores in results:
        for rank, (item_id, value) in enumerate(ids_scores, start=1):
            entry = ranked.setdefault((source, item_id), {"rrf": 0.0})
            entry["rrf"] += 1.0 / (RRF_K + rank)
            if kind == "vector":
                entry["vector_rank"], entry["similarity"] = rank, 1.0 - value
            else:
                entry["text_rank"], entry["bm25"] = rank, value
    if not ranked:
        return []
    rows = await _load(store, user_id, ranked, exclude_conversation)
    now = time.time()
    best_rrf = 2.0 / (RRF_K + 1)  # first in both lists
    hits = []
    for (source, item_id), entry in ranked.items():
        row = rows.get((source, item_id))
        if row is None:
            continue
        importance = row["importance"]
        age_days = max(0.0, now - row["updated"]) / 86400.0
        recency = math.exp(-age_days * math.log(2) / _HALF_LIFE_DAYS)
        score = _W_RRF * entry["rrf"] / best_rrf + _W_IMPORTANCE * importance + _W_RECENCY * recency
        hits.append(
            Hit(
                source=source,
                id=item_id,
                text=row["text"],
                kind=row["kind"],
                conversation_id=row["conversation_id"],
                source_message_ids=row["sources"],
                created=row["created"],
                updated=row["updated"],
                importance=importance,
                score=score,
                rrf=entry["rrf"],
                recency=recency,
                vector_rank=entry.get("vector_rank"),
                similarity=entry.get("similarity"),
                text_rank=entry.get("text_rank"),
                bm25=entry.get("bm25"),
            )
        )
    hits.sort(key=lambda h: h.score, reverse=True)
    return hits[:limit]


async def _knn(
    store: MemoryStore, table: str, source: str, user_id: int, vector: bytes, k: int
) -> tuple[str, str, list[tuple[int, float]]]:
    cached = await store.vcache.search(store._readers, table, user_id, vector, k)
    if cached is not None:
        return "vector", source, cached
    rows = await store._readers.fetchall(
        f"SELECT item_id, distance FROM {table}_vec"
        " WHERE embedding MATCH ? AND k = ? AND user_id = ?",
        (vector, k, user_id),
    )
    return "vector", source, [(int(r[0]), float(r[1])) for r in rows]


async def _fts(
    store: MemoryStore, table: str, source: str, user_id: int, match: str, k: int
) -> tuple[str, str, list[tuple[int, float]]]:
    rows = await store._readers.fetchall(
        f"SELECT t.id, bm25({table}_fts) AS rank FROM {table}_fts"
        f" JOIN {table} t ON t.id = {table}_fts.rowid"
        f" WHERE {table}_fts MATCH ? AND t.user_id = ? ORDER BY rank LIMIT ?",
        (match, user_id, k),
    )
    return "text", source, [(int(r[0]), float(r[1])) for r in rows]


async def _load(
    store: MemoryStore,
    user_id: int,
    ranked: dict[tuple[str, int], dict[str, Any]],
    exclude_conversation: int | None,
) -> dict[tuple[str, int], dict[str, Any]]:
    import json

    out: dict[tuple[str, int], dict[str, Any]] = {}
    memory_ids = [i for (s, i) in ranked if s == "memory"]
    message_ids = [i for (s, i) in ranked if s == "message"]
    if memory_ids:
        marks = ",".join("?" * len(memory_ids))
        for r in await store._readers.fetchall(
            "SELECT id, text, kind, source_message_ids, importance, created, updated"
            f" FROM memories WHERE user_id = ? AND id IN ({marks})",
            (user_id, *memory_ids),
        ):
            out[("memory", r["id"])] = {
                "text": r["text"],
                "kind": r["kind"],
                "conversation_id": None,
                "sources": tuple(json.loads(r["source_message_ids"])),
                "importance": r["importance"],
                "created": r["created"],
                "updated": r["updated"],
            }
    if message_ids:
        marks = ",".join("?" * len(message_ids))
        for r in await store._readers.fetchall(
            "SELECT id, content, role, conversation_id, created FROM messages"
            f" WHERE user_id = ? AND id IN ({marks})",
            (user_id, *message_ids),
        ):
            if r["conversation_id"] == exclude_conversation:
                continue
            out[("message", r["id"])] = {
                "text": r["content"],
                "kind": r["role"],
                "conversation_id": r["conversation_id"],
                "sources": (r["id"],),
                "importance": _MESSAGE_IMPORTANCE,
                "created": r["created"],
                "updated": r["created"],
            }
    return out
