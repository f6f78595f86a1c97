"""Whole-user operations for the web layer and the CLI: export everything as JSON."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mongars_edge.errors import NotFoundError
from mongars_edge.memory.records import to_dict

if TYPE_CHECKING:
    from mongars_edge.memory.store import MemoryStore

EXPORT_FORMAT = "mongars-edge-export/1"


async def export_user(store: MemoryStore, user_id: int) -> dict[str, Any]:
    """Everything about one user: account (no password hash), tokens (no hashes),
    conversations with messages, memories. Vectors are left out: they are derived data."""
    user = await store.get_user(user_id)
    if user is None:
        raise NotFoundError(f"no user with id {user_id}")
    conversations: list[dict[str, Any]] = []
    offset = 0
    while batch := await store.list_conversations(user_id, limit=500, offset=offset):
        for conversation in batch:
            conversations.append(await store.export_conversation(user_id, conversation.id))
        offset += len(batch)
    memories: list[dict[str, Any]] = []
    offset = 0
    while page := await store.list_memories(user_id, limit=1000, offset=offset):
        memories.extend(to_dict(m) for m in page)
        offset += len(page)
    tokens = [to_dict(t) for t in await store.list_tokens(user_id)]
    return {
        "format": EXPORT_FORMAT,
        "exported": time.time(),
        "user": user.public(),
        "tokens": tokens,
        "conversations": conversations,
        "memories": memories,
    }
