"""Conversations named by another program's id (Home Assistant's, through the Wyoming agent)."""

from __future__ import annotations

import pytest

from mongars_edge.errors import InvalidRequestError, NotFoundError
from mongars_edge.memory.store import MemoryStore


async def test_a_link_names_one_conversation_per_user_and_dies_with_it(store: MemoryStore) -> None:
    ana, bob = await store.create_user("ana"), await store.create_user("bob")
    first = await store.create_conversation(ana.id, "kitchen")
    assert await store.conversation_link(ana.id, "wyoming", "01HA") is None
    assert await store.link_conversation(ana.id, "wyoming", "01HA", first.id) == first.id
    assert await store.conversation_link(ana.id, "wyoming", "01HA") == first.id
    # The same id from another program, or for another user, is another name.
    assert await store.conversation_link(ana.id, "other", "01HA") is None
    assert await store.conversation_link(bob.id, "wyoming", "01HA") is None
    # Two first turns racing: the earlier link wins, the later one is told which.
    second = await store.create_conversation(ana.id, "kitchen again")
    assert await store.link_conversation(ana.id, "wyoming", "01HA", second.id) == first.id
    await store.delete_conversation(ana.id, first.id)
    assert await store.conversation_link(ana.id, "wyoming", "01HA") is None


async def test_a_link_to_someone_elses_conversation_or_an_empty_id_is_refused(
    store: MemoryStore,
) -> None:
    ana, bob = await store.create_user("ana"), await store.create_user("bob")
    theirs = await store.create_conversation(bob.id, "bob's")
    with pytest.raises(NotFoundError):
        await store.link_conversation(ana.id, "wyoming", "01HA", theirs.id)
    with pytest.raises(InvalidRequestError):
        await store.link_conversation(bob.id, "wyoming", "  ", theirs.id)
    assert await store.conversation_link(ana.id, "wyoming", "01HA") is None
