"""Conversations and their messages; every call is scoped by the owning user's id."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from mongars_edge.errors import NotFoundError
from mongars_edge.memory.db import Conn, Readers, Writer
from mongars_edge.memory.records import ROLES, STATUSES, Conversation, Message, to_dict
from mongars_edge.memory.validate import check_choice, clean_text

_TITLE_CHARS = 200


@dataclass(frozen=True)
class NewMessage:
    """A message to append; `add_messages` writes several in one transaction."""

    role: str
    content: str
    tokens: int | None = None
    model: str | None = None
    adapter: str | None = None
    latency_ms: int | None = None
    status: str = "complete"
    tool_calls: str | None = None  # JSON, see records.Message
    tool_call_id: str | None = None

    def checked(self) -> NewMessage:
        check_choice(self.role, ROLES, "message role")
        check_choice(self.status, STATUSES, "message status")
        content = clean_text(self.content, "message content")
        return replace(self, content=content)


def _owned(conn: Conn, user_id: int, conversation_id: int) -> None:
    row = conn.execute(
        "SELECT 1 FROM conversations WHERE id = ? AND user_id = ?", (conversation_id, user_id)
    ).fetchone()
    if row is None:
        # Same answer whether it does not exist or belongs to someone else: no probing.
        raise NotFoundError(f"no conversation {conversation_id} for this user")


class ConversationsMixin:
    """Conversation methods of MemoryStore."""

    _writer: Writer
    _readers: Readers

    def _vectors_changed(self) -> None:
        """Overridden by the store: new rows wait for their vectors."""

    async def create_conversation(self, user_id: int, title: str = "") -> Conversation:
        title = clean_text(title, "title")[:_TITLE_CHARS]
        now = time.time()

        def job(conn: Conn) -> int:
            if conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
                raise NotFoundError(f"no user with id {user_id}")
            cur = conn.execute(
                "INSERT INTO conversations(user_id, title, created, updated) VALUES (?, ?, ?, ?)",
                (user_id, title, now, now),
            )
            return int(cur.lastrowid)

        return Conversation(await self._writer.run(job), user_id, title, now, now)

    async def conversation_link(self, user_id: int, source: str, external_id: str) -> int | None:
        """Our id of the conversation `source` calls `external_id` for this user, if linked."""
        row = await self._readers.fetchone(
            "SELECT conversation_id FROM conversation_links"
            " WHERE source = ? AND user_id = ? AND external_id = ?",
            (source, user_id, external_id),
        )
        return None if row is None else int(row[0])

    async def link_conversation(
        self, user_id: int, source: str, external_id: str, conversation_id: int
    ) -> int:
        """Name one of this user's conversations by `source`'s own id; returns the conversation
        the id names now (an earlier link wins: two first turns racing keep the first)."""
        source = clean_text(source, "link source", allow_empty=False)
        external_id = clean_text(external_id, "conversation id", allow_empty=False)

        def job(conn: Conn) -> int:
            _owned(conn, user_id, conversation_id)
            conn.execute(
                "INSERT OR IGNORE INTO conversation_links(source, user_id, external_id,"
                " conversation_id, created) VALUES (?, ?, ?, ?, ?)",
                (source, user_id, external_id, conversation_id, time.time()),
            )
            row = conn.execute(
                "SELECT conversation_id FROM conversation_links"
                " WHERE source = ? AND user_id = ? AND external_id = ?",
                (source, user_id, external_id),
            ).fetchone()
            return int(row[0])

        return await self._writer.run(job)

    async def list_conversations(
        self, user_id: int, *, limit: int = 50, offset: int = 0
    ) -> list[Conversation]:
        """Most recently active first."""
        rows = await self._readers.fetchall(
            "SELECT * FROM conversations WHERE user_id = ? ORDER BY updated DESC, id DESC"
            " LIMIT ? OFFSET ?",
            (user_id, max(0, limit), max(0, offset)),
        )
        return [Conversation.from_row(r) for r in rows]

    async def get_conversation(self, user_id: int, conversation_id: int) -> Conversation:
        row = await self._readers.fetchone(
            "SELECT * FROM conversations WHERE id = ? AND user_id = ?", (conversation_id, user_id)
        )
        if row is None:
            raise NotFoundError(f"no conversation {conversation_id} for this user")
        return Conversation.from_row(row)

    async def rename_conversation(self, user_id: int, conversation_id: int, title: str) -> None:
        title = clean_text(title, "title")[:_TITLE_CHARS]

        def job(conn: Conn) -> None:
            _owned(conn, user_id, conversation_id)
            conn.execute(
                "UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id)
            )

        await self._writer.run(job)

    async def delete_conversation(self, user_id: int, conversation_id: int) -> None:
        def job(conn: Conn) -> None:
            _owned(conn, user_id, conversation_id)
            conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

        await self._writer.run(job)

    async def get_messages(
        self, user_id: int, conversation_id: int, *, limit: int = 10_000
    ) -> list[Message]:
        """Messages in order; NotFoundError if the conversation is not this user's."""
        await self.get_conversation(user_id, conversation_id)
        rows = await self._readers.fetchall(
            "SELECT * FROM messages WHERE conversation_id = ? AND user_id = ? ORDER BY id LIMIT ?",
            (conversation_id, user_id, limit),
        )
        return [Message.from_row(r) for r in rows]

    async def add_messages(
        self, user_id: int, conversation_id: int, messages: list[NewMessage]
    ) -> list[Message]:
        """Append messages in one transaction: when this returns they are on disk (fsynced)."""
        checked = [m.checked() for m in messages]
        now = time.time()

        def job(conn: Conn) -> list[int]:
            _owned(conn, user_id, conversation_id)
            ids = []
            for m in checked:
                cur = conn.execute(
                    "INSERT INTO messages(conversation_id, user_id, role, content, tokens, model,"
                    " adapter, latency_ms, status, created, tool_calls, tool_call_id)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        conversation_id,
                        user_id,
                        m.role,
                        m.content,
                        m.tokens,
                        m.model,
                        m.adapter,
                        m.latency_ms,
                        m.status,
                        now,
                        m.tool_calls,
                        m.tool_call_id,
                    ),
                )
                ids.append(int(cur.lastrowid))
            conn.execute(
                "UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id)
            )
            return ids

        ids = await self._writer.run(job)
        self._vectors_changed()
        return [
            Message(
                i,
                conversation_id,
                user_id,
                m.role,
                m.content,
                m.tokens,
                m.model,
                m.adapter,
                m.latency_ms,
                m.status,
                now,
                m.tool_calls,
                m.tool_call_id,
            )
            for i, m in zip(ids, checked, strict=True)
        ]

    async def add_message(
        self, user_id: int, conversation_id: int, role: str, content: str, **fields: Any
    ) -> Message:
        """Append one message (fields: tokens, model, adapter, latency_ms, status)."""
        added = await self.add_messages(
            user_id, conversation_id, [NewMessage(role, content, **fields)]
        )
        return added[0]

    async def add_turn(
        self, user_id: int, conversation_id: int, user_text: str, assistant_text: str, **fields: Any
    ) -> tuple[Message, Message]:
        """The user's message and the answer, in one transaction (fields apply to the answer)."""
        user_msg, answer = await self.add_messages(
            user_id,
            conversation_id,
            [NewMessage("user", user_text), NewMessage("assistant", assistant_text, **fields)],
        )
        return user_msg, answer

    async def export_conversation(self, user_id: int, conversation_id: int) -> dict[str, Any]:
        conversation = await self.get_conversation(user_id, conversation_id)
        messages = await self.get_messages(user_id, conversation_id)
        return to_dict(conversation) | {"messages": [to_dict(m) for m in messages]}
