"""Users, API tokens and web sessions. Secrets arrive already hashed: the store never sees them."""

from __future__ import annotations

import time
from typing import Any

import sqlean

from mongars_edge.errors import InvalidRequestError, NotFoundError
from mongars_edge.memory.db import Conn, Readers, Writer
from mongars_edge.memory.records import ApiToken, Session, User
from mongars_edge.memory.validate import clean_name


class UserExistsError(InvalidRequestError):
    """A user with that name already exists."""

    http_status = 409
    kind = "conflict"


class AccountsMixin:
    """Account methods of MemoryStore (kept apart so each file reads in one sitting)."""

    _writer: Writer
    _readers: Readers

    async def create_user(
        self, name: str, password_hash: str | None = None, *, is_admin: bool = False
    ) -> User:
        name = clean_name(name)

        def job(conn: Conn) -> Any:
            try:
                cur = conn.execute(
                    "INSERT INTO users(name, password_hash, is_admin, created) VALUES (?, ?, ?, ?)",
                    (name, password_hash, int(is_admin), time.time()),
                )
            except sqlean.IntegrityError:
                raise UserExistsError(f"a user named {name!r} already exists") from None
            return conn.execute("SELECT * FROM users WHERE id = ?", (cur.lastrowid,)).fetchone()

        return User.from_row(await self._writer.run(job))

    async def get_user(self, user_id: int) -> User | None:
        row = await self._readers.fetchone("SELECT * FROM users WHERE id = ?", (user_id,))
        return None if row is None else User.from_row(row)

    async def get_user_by_name(self, name: str) -> User | None:
        row = await self._readers.fetchone("SELECT * FROM users WHERE name = ?", (name,))
        return None if row is None else User.from_row(row)

    async def require_user(self, name: str) -> User:
        """The named user, or a NotFoundError that says so."""
        user = await self.get_user_by_name(name)
        if user is None:
            raise NotFoundError(f"no user named {name!r} on this box")
        return user

    async def list_users(self) -> list[User]:
        rows = await self._readers.fetchall("SELECT * FROM users ORDER BY name")
        return [User.from_row(r) for r in rows]

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        def job(conn: Conn) -> int:
            cur = conn.execute(
                "UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id)
            )
            return int(cur.rowcount)

        if not await self._writer.run(job):
            raise NotFoundError(f"no user with id {user_id}")

    async def create_token(self, user_id: int, name: str, token_hash: str) -> ApiToken:
        def job(conn: Conn) -> Any:
            cur = conn.execute(
                "INSERT INTO api_tokens(token_hash, name, user_id, created) VALUES (?, ?, ?, ?)",
                (token_hash, name, user_id, time.time()),
            )
            return conn.execute(
                "SELECT * FROM api_tokens WHERE id = ?", (cur.lastrowid,)
            ).fetchone()

        try:
            return ApiToken.from_row(await self._writer.run(job))
        except sqlean.IntegrityError:
            raise NotFoundError(f"no user with id {user_id}") from None

    async def find_token(self, token_hash: str) -> ApiToken | None:
        """The live (not revoked) token with this hash."""
        row = await self._readers.fetchone(
            "SELECT * FROM api_tokens WHERE token_hash = ? AND revoked IS NULL", (token_hash,)
        )
        return None if row is None else ApiToken.from_row(row)

    async def touch_token(self, token_id: int) -> None:
        await self._writer.run(
            lambda conn: conn.execute(
                "UPDATE api_tokens SET last_used = ? WHERE id = ?", (time.time(), token_id)
            )
        )

    async def list_tokens(self, user_id: int) -> list[ApiToken]:
        rows = await self._readers.fetchall(
            "SELECT * FROM api_tokens WHERE user_id = ? ORDER BY id", (user_id,)
        )
        return [ApiToken.from_row(r) for r in rows]

    async def revoke_token(self, user_id: int, token_id: int) -> None:
        def job(conn: Conn) -> int:
            cur = conn.execute(
                "UPDATE api_tokens SET revoked = ?"
                " WHERE id = ? AND user_id = ? AND revoked IS NULL",
                (time.time(), token_id, user_id),
            )
            return int(cur.rowcount)

        if not await self._writer.run(job):
            raise NotFoundError(f"no live token {token_id} for this user")

    async def create_session(
        self, user_id: int, id_hash: str, csrf: str, expires: float
    ) -> Session:
        now = time.time()
        await self._writer.run(
            lambda conn: conn.execute(
                "INSERT INTO sessions(id_hash, user_id, csrf, created, expires) VALUES (?,?,?,?,?)",
                (id_hash, user_id, csrf, now, expires),
            )
        )
        return Session(id_hash, user_id, csrf, now, expires)

    async def get_session(self, id_hash: str) -> Session | None:
        """The session if it exists and has not expired."""
        row = await self._readers.fetchone(
            "SELECT * FROM sessions WHERE id_hash = ? AND expires > ?", (id_hash, time.time())
        )
        return None if row is None else Session.from_row(row)

    async def delete_session(self, id_hash: str) -> None:
        await self._writer.run(
            lambda conn: conn.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))
        )

    async def purge_expired_sessions(self) -> int:
        def job(conn: Conn) -> int:
            return int(
                conn.execute("DELETE FROM sessions WHERE expires <= ?", (time.time(),)).rowcount
            )

        return await self._writer.run(job)
