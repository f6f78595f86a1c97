"""Rows as frozen dataclasses: what the store hands to the chat pipeline and the web layer."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
Status = Literal["complete", "partial", "error"]
MemoryKind = Literal["fact", "preference", "summary"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
STATUSES: tuple[str, ...] = ("complete", "partial", "error")
MEMORY_KINDS: tuple[str, ...] = ("fact", "preference", "summary")


@dataclass(frozen=True)
class User:
    id: int
    name: str
    password_hash: str | None
    is_admin: bool
    created: float

    @classmethod
    def from_row(cls, row: Any) -> User:
        return cls(
            row["id"], row["name"], row["password_hash"], bool(row["is_admin"]), row["created"]
        )

    def public(self) -> dict[str, Any]:
        """Everything but the password hash."""
        return {
            "id": self.id,
            "name": self.name,
            "is_admin": self.is_admin,
            "created": self.created,
        }


@dataclass(frozen=True)
class ApiToken:
    id: int
    user_id: int
    name: str
    token_hash: str
    created: float
    last_used: float | None
    revoked: float | None

    @classmethod
    def from_row(cls, row: Any) -> ApiToken:
        return cls(
            row["id"],
            row["user_id"],
            row["name"],
            row["token_hash"],
            row["created"],
            row["last_used"],
            row["revoked"],
        )


@dataclass(frozen=True)
class Session:
    id_hash: str
    user_id: int
    csrf: str
    created: float
    expires: float

    @classmethod
    def from_row(cls, row: Any) -> Session:
        return cls(row["id_hash"], row["user_id"], row["csrf"], row["created"], row["expires"])


@dataclass(frozen=True)
class Conversation:
    id: int
    user_id: int
    title: str
    created: float
    updated: float

    @classmethod
    def from_row(cls, row: Any) -> Conversation:
        return cls(row["id"], row["user_id"], row["title"], row["created"], row["updated"])


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    user_id: int
    role: str
    content: str
    tokens: int | None
    model: str | None
    adapter: str | None
    latency_ms: int | None
    status: str
    created: float
    # JSON: [{"id", "name", "arguments"}] (arguments as JSON text); on assistant messages.
    tool_calls: str | None = None
    tool_call_id: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Message:
        return cls(
            row["id"],
            row["conversation_id"],
            row["user_id"],
            row["role"],
            row["content"],
            row["tokens"],
            row["model"],
            row["adapter"],
            row["latency_ms"],
            row["status"],
            row["created"],
            row["tool_calls"],
            row["tool_call_id"],
        )


@dataclass(frozen=True)
class Memory:
    id: int
    user_id: int
    text: str
    kind: str
    source_message_ids: tuple[int, ...]
    importance: float
    created: float
    updated: float
    embedded: bool

    @classmethod
    def from_row(cls, row: Any) -> Memory:
        sources = tuple(int(i) for i in json.loads(row["source_message_ids"] or "[]"))
        return cls(
            row["id"],
            row["user_id"],
            row["text"],
            row["kind"],
            sources,
            row["importance"],
            row["created"],
            row["updated"],
            bool(row["embedded"]),
        )


def to_dict(record: Any) -> dict[str, Any]:
    data: dict[str, Any] = asdict(record)
    data.pop("password_hash", None)
    data.pop("token_hash", None)
    return data
