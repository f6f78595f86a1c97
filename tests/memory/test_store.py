from __future__ import annotations

import pytest

from mongars_edge.errors import InvalidRequestError, NotFoundError
from mongars_edge.memory.accounts import UserExistsError
from mongars_edge.memory.store import MemoryStore


async def test_accounts_tokens_sessions(store: MemoryStore) -> None:
    alice = await store.create_user("alice", "scrypt$hash", is_admin=True)
    assert (await store.get_user_by_name("ALICE")) == alice  # names are case-insensitive
    with pytest.raises(UserExistsError):
        await store.create_user("Alice")
    with pytest.raises(InvalidRequestError):
        await store.create_user("   ")
    token = await store.create_token(alice.id, "laptop", "sha256:abc")
    assert (await store.find_token("sha256:abc")) == token
    await store.touch_token(token.id)
    await store.revoke_token(alice.id, token.id)
    assert await store.find_token("sha256:abc") is None
    with pytest.raises(NotFoundError):
        await store.revoke_token(alice.id, token.id)
    session = await store.create_session(alice.id, "sess-hash", "csrf", expires=4e9)
    assert await store.get_session("sess-hash") == session
    await store.create_session(alice.id, "old", "csrf", expires=1.0)
    assert await store.get_session("old") is None
    assert await store.purge_expired_sessions() == 1
    await store.delete_session("sess-hash")
    assert await store.get_session("sess-hash") is None


async def test_conversations_are_scoped_by_user(store: MemoryStore) -> None:
    alice = await store.create_user("alice")
    bob = await store.create_user("bob")
    conv = await store.create_conversation(alice.id, "Recettes")
    user_msg, answer = await store.add_turn(
        alice.id, conv.id, "Bonjour", "Salut !", tokens=3, model="smollm2", latency_ms=120
    )
    assert answer.model == "smollm2"
    assert answer.status == "complete"
    await store.add_message(alice.id, conv.id, "assistant", "coupé", status="partial")
    messages = await store.get_messages(alice.id, conv.id)
    assert [m.content for m in messages] == ["Bonjour", "Salut !", "coupé"]
    assert messages[0].id == user_msg.id
    # Bob can neither read, write, rename nor delete Alice's conversation.
    with pytest.raises(NotFoundError):
        await store.get_conversation(bob.id, conv.id)
    with pytest.raises(NotFoundError):
        await store.get_messages(bob.id, conv.id)
    with pytest.raises(NotFoundError):
        await store.add_message(bob.id, conv.id, "user", "intrusion")
    with pytest.raises(NotFoundError):
        await store.rename_conversation(bob.id, conv.id, "pwned")
    with pytest.raises(NotFoundError):
        await store.delete_conversation(bob.id, conv.id)
    assert await store.list_conversations(bob.id) == []
    await store.rename_conversation(alice.id, conv.id, "Cuisine")
    assert (await store.get_conversation(alice.id, conv.id)).title == "Cuisine"
    exported = await store.export_conversation(alice.id, conv.id)
    assert len(exported["messages"]) == 3
    await store.delete_conversation(alice.id, conv.id)
    assert await store.list_conversations(alice.id) == []
    with pytest.raises(InvalidRequestError):
        await store.add_message(alice.id, conv.id, "robot", "x")


async def test_memories_recall_and_user_wall(store: MemoryStore) -> None:
    alice = await store.create_user("alice")
    bob = await store.create_user("bob")
    await store.add_memory(alice.id, "Mon chien s'appelle Rex.", "fact", importance=0.8)
    await store.add_memory(alice.id, "I prefer green tea in the morning.", "preference")
    await store.add_memory(bob.id, "Bob's dog is called Max.", "fact")
    hits = await store.recall(alice.id, "Comment s'appelle mon chien ?")
    assert hits[0].text == "Mon chien s'appelle Rex."
    assert hits[0].source == "memory"
    assert hits[0].vector_rank == 1
    assert all("Max" not in h.text for h in hits)
    bob_hits = await store.recall(bob.id, "dog")
    assert {h.text for h in bob_hits} == {"Bob's dog is called Max."}


async def test_near_duplicates_merge(store: MemoryStore) -> None:
    alice = await store.create_user("alice")
    first = await store.add_memory(
        alice.id, "I prefer green tea.", "preference", source_message_ids=[1]
    )
    second = await store.add_memory(
        alice.id, "I prefer green tea!", "preference", source_message_ids=[2]
    )
    assert second.id == first.id
    assert second.source_message_ids == (1, 2)
    other = await store.add_memory(alice.id, "I live in Montreal.", "fact")
    assert other.id != first.id
    assert len(await store.list_memories(alice.id)) == 2


async def test_messages_get_vectors_in_background(store: MemoryStore) -> None:
    alice = await store.create_user("alice")
    conv = await store.create_conversation(alice.id)
    await store.add_turn(alice.id, conv.id, "Ma soeur Julie habite à Québec.", "Noté !")
    await store.flush_vectors()
    assert await store.pending_vectors() == 0
    hits = await store.recall(alice.id, "Where does my sister live?")
    assert hits[0].source == "message"
    assert "Julie" in hits[0].text
    assert hits[0].conversation_id == conv.id
