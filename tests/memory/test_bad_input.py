"""Bad input is stored faithfully or refused with a clear error; a full disk fails cleanly."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mongars_edge.errors import InvalidRequestError, NotFoundError
from mongars_edge.memory.errors import StorageFullError
from mongars_edge.memory.store import MemoryStore

SQLISH = "'); DROP TABLE users; -- \" OR 1=1; DELETE FROM memories WHERE 1; /*"


async def test_one_megabyte_message_is_stored_and_embedded(store: MemoryStore) -> None:
    alice = await store.create_user("alice")
    conv = await store.create_conversation(alice.id)
    big = ("Le chat dort sur le canapé. " * 40_000)[:1_048_576]
    message = await store.add_message(alice.id, conv.id, "user", big)
    assert (await store.get_messages(alice.id, conv.id))[0].content == big
    await store.flush_vectors()  # truncated to the model's 512 tokens, not skipped
    assert await store.pending_vectors() == 0
    hits = await store.recall(alice.id, "où dort le chat")
    assert hits[0].id == message.id


async def test_invalid_utf8_sql_and_empty_text(store: MemoryStore) -> None:
    alice = await store.create_user("alice")
    conv = await store.create_conversation(alice.id, SQLISH)
    raw = await store.add_message(alice.id, conv.id, "user", b"caf\xe9 \xff\xfe ok")  # type: ignore[arg-type]
    assert raw.content == "caf\ufffd \ufffd\ufffd ok"
    lone = await store.add_message(alice.id, conv.id, "user", "bad \udcff surrogate")
    assert lone.content == "bad \ufffd surrogate"
    sql = await store.add_message(alice.id, conv.id, "user", SQLISH)
    empty = await store.add_message(alice.id, conv.id, "assistant", "", status="error")
    memory = await store.add_memory(alice.id, SQLISH, "fact")
    contents = [m.content for m in await store.get_messages(alice.id, conv.id)]
    assert contents == [raw.content, lone.content, SQLISH, ""]
    assert (await store.get_conversation(alice.id, conv.id)).title == SQLISH
    assert (await store.get_memory(alice.id, memory.id)) is not None
    assert sql.id and empty.id
    await store.flush_vectors()
    assert await store.pending_vectors() == 0
    assert [u.name for u in await store.list_users()] == ["alice"]
    with pytest.raises(InvalidRequestError, match="empty"):
        await store.add_memory(alice.id, "   ", "fact")
    with pytest.raises(InvalidRequestError, match="memory kind"):
        await store.add_memory(alice.id, "x", "opinion")
    with pytest.raises(InvalidRequestError, match="limit"):
        await store.add_message(alice.id, conv.id, "user", "x" * (4 * 1024 * 1024 + 1))
    with pytest.raises(NotFoundError):
        await store.add_memory(999, "nobody", "fact")
    assert await store.recall(alice.id, "") == []
    assert await store.integrity_check() == "ok"


async def test_delete_user_removes_everything_including_vectors(store: MemoryStore) -> None:
    alice = await store.create_user("alice")
    bob = await store.create_user("bob")
    for user in (alice, bob):
        conv = await store.create_conversation(user.id)
        await store.add_turn(user.id, conv.id, "J'habite à Lévis.", "Noté.")
        await store.add_memory(user.id, "Habite à Lévis.", "fact")
        await store.create_token(user.id, "t", f"hash-{user.name}")
    await store.flush_vectors()
    exported = await store.export_user(alice.id)
    assert exported["user"]["name"] == "alice"
    assert "password_hash" not in exported["user"]
    assert len(exported["conversations"][0]["messages"]) == 2
    assert exported["memories"][0]["text"] == "Habite à Lévis."
    assert "token_hash" not in exported["tokens"][0]
    await store.delete_user(alice.id)
    for table in ("messages", "memories", "conversations", "api_tokens"):
        row = await store._readers.fetchone(
            f"SELECT count(*) FROM {table} WHERE user_id = ?", (alice.id,)
        )
        assert row[0] == 0, table
    for table in ("memories_vec", "messages_vec"):
        rows = await store._readers.fetchall(f"SELECT user_id FROM {table}")
        assert {r[0] for r in rows} == {bob.id}, table
    fts = await store._readers.fetchone(
        "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'levis'"
    )
    assert fts[0] == 1  # only Bob's message is left in the full-text index
    assert len(await store.recall(bob.id, "Lévis")) == 3
    with pytest.raises(NotFoundError):
        await store.delete_user(alice.id)
    assert await store.integrity_check() == "ok"


@contextlib.contextmanager
def _tiny_disk(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_full_disk_fails_clearly_and_keeps_the_database_consistent(tmp_path: Path) -> None:
    with _tiny_disk(tmp_path / "disk", "1m") as disk:
        async with MemoryStore.open(disk / "mongars.db") as store:
            alice = await store.create_user("alice")
            conv = await store.create_conversation(alice.id)
            acked: list[int] = []

            async def fill() -> None:
                for i in range(200):
                    msg = await store.add_message(alice.id, conv.id, "user", f"{i} " + "x" * 50_000)
                    acked.append(msg.id)

            with pytest.raises(StorageFullError, match="disk holding the database is full"):
                await fill()
            assert acked  # some writes succeeded before the disk filled
            assert await store.integrity_check() == "ok"
            stored = [m.id for m in await store.get_messages(alice.id, conv.id)]
            assert stored == acked
            # Small writes may still fail; what matters is a clear error, never a broken file.
            with contextlib.suppress(StorageFullError):
                await store.delete_conversation(alice.id, conv.id)
            assert await store.integrity_check() == "ok"
