# ruff: noqa: S608 - SQL is composed only from our own table names; values are bound.
"""MemoryStore: the box's one SQLite file (accounts, conversations, memories, vectors, full text).

Writes go through one writer thread (`BEGIN IMMEDIATE`, WAL); reads use a small pool. Every
method that touches a user's data takes the user id and filters by it in SQL.

Vectors: a row is written first (that is the acknowledgement) and embedded just after by a
background task, in batches. A row whose embedding failed stays `embedded = 0` and is retried;
it is still found by full-text search meanwhile. No vector is ever made up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from mongars_edge.datadir import create_private, make_dir
from mongars_edge.errors import NotFoundError
from mongars_edge.logonce import WarnOnce
from mongars_edge.memory import schema
from mongars_edge.memory.accounts import AccountsMixin
from mongars_edge.memory.conversations import ConversationsMixin
from mongars_edge.memory.db import Conn, Readers, Writer
from mongars_edge.memory.embed import Embedder
from mongars_edge.memory.errors import EmbeddingError
from mongars_edge.memory.records import MEMORY_KINDS, Memory
from mongars_edge.memory.validate import check_choice, clean_text
from mongars_edge.memory.vcache import VectorCache

if TYPE_CHECKING:
    from mongars_edge.memory.recall import Hit

log = logging.getLogger(__name__)

# e5 similarities are compressed (unrelated sentences score ~0.75): only near-identical
# statements pass 0.95, e.g. "I prefer tea" / "I prefer tea, actually".
MERGE_SIMILARITY: Final = 0.95
_EMBED_BATCH: Final = 32
_RETRY_S: Final = 30.0
# Rows that need no vector (system/tool messages, empty text) are marked with this.
_NO_VECTOR: Final = 2


def _blob(vector: Any) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


class MemoryStore(AccountsMixin, ConversationsMixin):
    """Open with `async with MemoryStore.open(path, embedder) as store`."""

    def __init__(
        self, path: Path, embedder: Embedder | None, readers: int, background: bool = True
    ) -> None:
        self.path = path
        self._background = background
        self.embedder = embedder
        self._writer = Writer(path)
        self._readers = Readers(path, readers)
        self._wake = asyncio.Event()
        self._embed_lock = asyncio.Lock()
        self._vector_task: asyncio.Task[None] | None = None
        self._warn = WarnOnce(log)
        self.vcache = VectorCache()
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        path: Path,
        embedder: Embedder | None = None,
        *,
        readers: int = 2,
        background: bool = True,
    ) -> AsyncIterator[MemoryStore]:
        """Open (creating or migrating) the database; close everything on exit.

        With an embedder, a background task gives pending rows their vectors (`background`
        False leaves that to `flush_vectors`, for short-lived command-line runs).
        """
        store = cls(path, embedder, readers, background)
        await store._start()
        try:
            yield store
        finally:
            await store._stop()

    async def _start(self) -> None:
        await asyncio.to_thread(self._create_file)
        await self._writer.start()
        try:
            await self._writer.run(schema.migrate, transaction=False)
            if self.embedder is not None:
                model_id, dim = self.embedder.model_id, self.embedder.dim
                await self._writer.run(
                    lambda conn: schema.ensure_vectors(conn, model_id, dim), transaction=False
                )
            await self._readers.start()
        except BaseException:
            await self._readers.stop()
            await self._writer.stop()
            raise
        if self.embedder is not None and self._background:
            self._vector_task = asyncio.create_task(self._vector_loop(), name="memory-vectors")
            self._wake.set()

    def _create_file(self) -> None:
        # Owner-only whatever the umask: it holds every conversation (its -wal and -shm
        # files take the same mode from it).
        make_dir(self.path.parent)
        create_private(self.path)

    async def _stop(self) -> None:
        if self._vector_task is not None:
            self._vector_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._vector_task
        await self._readers.stop()
        await self._writer.stop()

    # ---- vectors ------------------------------------------------------------------------------

    def _vectors_changed(self) -> None:
        self._wake.set()
        for listener in self._listeners:
            listener()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the loop) after every write of messages or memories."""
        self._listeners.append(callback)

    async def _vector_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush_vectors()
                if self._warn.forget("vectors"):
                    log.info("vectors are written again; pending rows are embedded")
            except Exception as exc:
                # The embedder or the disk failed: rows stay pending (full-text search still
                # finds them).
                self._warn("vectors", "rows wait for a vector: %s", exc, trace=True)
                await asyncio.sleep(_RETRY_S)
                self._wake.set()

    async def flush_vectors(self) -> int:
        """Embed every pending row now; returns how many rows got a vector."""
        done = 0
        async with self._embed_lock:
            for table in ("memories", "messages"):
                while count := await self._embed_batch(table):
                    done += count
        return done

    async def pending_vectors(self) -> int:
        row = await self._readers.fetchone(
            "SELECT (SELECT count(*) FROM memories WHERE embedded = 0)"
            " + (SELECT count(*) FROM messages WHERE embedded = 0) AS n"
        )
        return int(row["n"])

    async def _embed_batch(self, table: str) -> int:
        assert self.embedder is not None
        column = "text" if table == "memories" else "content"
        rows = await self._readers.fetchall(
            f"SELECT id, user_id, {column} AS body"
            + (", role" if table == "messages" else ", 'memory' AS role")
            + f" FROM {table} WHERE embedded = 0 ORDER BY id LIMIT ?",
            (_EMBED_BATCH,),
        )
        if not rows:
            return 0
        wanted = [
            r for r in rows if r["body"].strip() and r["role"] in ("memory", "user", "assistant")
        ]
        skipped = [r["id"] for r in rows if r not in wanted]
        vectors = await self.embedder.passages([r["body"] for r in wanted], background=True)

        def job(conn: Conn) -> list[tuple[int, int, Any]]:
            written = []
            for row, vector in zip(wanted, vectors, strict=True):
                # The text may have changed or vanished while we embedded: skip those.
                current = conn.execute(
                    f"SELECT {column} FROM {table} WHERE id = ? AND embedded = 0",
                    (row["id"],),
                ).fetchone()
                if current is None or current[0] != row["body"]:
                    continue
                conn.execute(f"DELETE FROM {table}_vec WHERE item_id = ?", (row["id"],))
                conn.execute(
                    f"INSERT INTO {table}_vec(item_id, user_id, embedding) VALUES (?, ?, ?)",
                    (row["id"], row["user_id"], _blob(vector)),
                )
                conn.execute(f"UPDATE {table} SET embedded = 1 WHERE id = ?", (row["id"],))
                written.append((row["user_id"], row["id"], vector))
            conn.executemany(
                f"UPDATE {table} SET embedded = ? WHERE id = ?",
                [(_NO_VECTOR, i) for i in skipped],
            )
            return written

        for user_id, item_id, vector in await self._writer.run(job):
            self.vcache.put(table, user_id, item_id, vector)
        return len(rows)

    # ---- memories -----------------------------------------------------------------------------

    async def add_memory(
        self,
        user_id: int,
        text: str,
        kind: str = "fact",
        *,
        importance: float = 0.5,
        source_message_ids: Sequence[int] = (),
        merge_similarity: float = MERGE_SIMILARITY,
    ) -> Memory:
        """Store a memory, or refresh a near-identical one of the same user and kind."""
        text = clean_text(text, "memory text", allow_empty=False).strip()
        check_choice(kind, MEMORY_KINDS, "memory kind")
        importance = min(1.0, max(0.0, float(importance)))
        vector: bytes | None = None
        if self.embedder is not None:
            try:
                vector = _blob((await self.embedder.passages([text]))[0])
            except EmbeddingError as exc:
                log.warning("memory stored without a vector for now: %s", exc)
        now = time.time()
        sources = sorted({int(i) for i in source_message_ids})

        def job(conn: Conn) -> int:
            if conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
                raise NotFoundError(f"no user with id {user_id}")
            target = _near_duplicate(conn, user_id, kind, vector, merge_similarity)
            if target is not None:
                old = conn.execute("SELECT * FROM memories WHERE id = ?", (target,)).fetchone()
                merged = sorted(set(json.loads(old["source_message_ids"])) | set(sources))
                # The newer wording wins: it may correct the older statement.
                conn.execute(
                    "UPDATE memories SET text = ?, updated = ?, importance = max(importance, ?),"
                    " source_message_ids = ? WHERE id = ?",
                    (text, now, importance, json.dumps(merged), target),
                )
                memory_id = target
            else:
                cur = conn.execute(
                    "INSERT INTO memories(user_id, text, kind, source_message_ids, importance,"
                    " created, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (user_id, text, kind, json.dumps(sources), importance, now, now),
                )
                memory_id = int(cur.lastrowid)
            if vector is not None:
                conn.execute("DELETE FROM memories_vec WHERE item_id = ?", (memory_id,))
                conn.execute(
                    "INSERT INTO memories_vec(item_id, user_id, embedding) VALUES (?, ?, ?)",
                    (memory_id, user_id, vector),
                )
                conn.execute("UPDATE memories SET embedded = 1 WHERE id = ?", (memory_id,))
            return memory_id

        memory_id = await self._writer.run(job)
        if vector is None:
            self._vectors_changed()
        else:
            self.vcache.put("memories", user_id, memory_id, np.frombuffer(vector, np.float32))
        memory = await self.get_memory(user_id, memory_id)
        assert memory is not None
        return memory

    async def get_memory(self, user_id: int, memory_id: int) -> Memory | None:
        row = await self._readers.fetchone(
            "SELECT * FROM memories WHERE id = ? AND user_id = ?", (memory_id, user_id)
        )
        return None if row is None else Memory.from_row(row)

    async def list_memories(
        self, user_id: int, *, kind: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Memory]:
        """A user's memories, most recently updated first."""
        if kind is not None:
            check_choice(kind, MEMORY_KINDS, "memory kind")
        rows = await self._readers.fetchall(
            "SELECT * FROM memories WHERE user_id = ? AND (? IS NULL OR kind = ?)"
            " ORDER BY updated DESC, id DESC LIMIT ? OFFSET ?",
            (user_id, kind, kind, max(0, limit), max(0, offset)),
        )
        return [Memory.from_row(r) for r in rows]

    async def delete_memory(self, user_id: int, memory_id: int) -> None:
        def job(conn: Conn) -> int:
            cur = conn.execute(
                "DELETE FROM memories WHERE id = ? AND user_id = ?", (memory_id, user_id)
            )
            return int(cur.rowcount)

        if not await self._writer.run(job):
            raise NotFoundError(f"no memory {memory_id} for this user")

    async def recall(
        self,
        user_id: int,
        query: str,
        *,
        limit: int = 8,
        sources: tuple[str, ...] = ("memory", "message"),
        exclude_conversation: int | None = None,
    ) -> list[Hit]:
        """The user's memories and past messages most relevant to `query`, best first."""
        from mongars_edge.memory.recall import recall

        return await recall(
            self,
            user_id,
            query,
            limit=limit,
            sources=sources,
            exclude_conversation=exclude_conversation,
        )

    # ---- whole-user operations -----------------------------------------------------------------

    async def export_user(self, user_id: int) -> dict[str, Any]:
        """Everything the box holds about a user, as JSON-ready data (no secrets, no vectors)."""
        from mongars_edge.memory.ops import export_user

        return await export_user(self, user_id)

    async def delete_user(self, user_id: int) -> None:
        """Delete a user and, by cascade, every row and vector that belonged to them."""

        def job(conn: Conn) -> int:
            return int(conn.execute("DELETE FROM users WHERE id = ?", (user_id,)).rowcount)

        if not await self._writer.run(job):
            raise NotFoundError(f"no user with id {user_id}")
        self.vcache.forget_user(user_id)

    async def integrity_check(self) -> str:
        row = await self._readers.fetchone("PRAGMA integrity_check")
        return str(row[0])


def _near_duplicate(
    conn: Conn, user_id: int, kind: str, vector: bytes | None, similarity: float
) -> int | None:
    if vector is None or similarity > 1.0:
        return None
    rows = conn.execute(
        "SELECT v.item_id, v.distance FROM memories_vec v"
        " WHERE v.embedding MATCH ? AND k = 4 AND v.user_id = ?",
        (vector, user_id),
    ).fetchall()
    for item_id, distance in rows:
        if 1.0 - distance < similarity:
            break
        row = conn.execute("SELECT kind FROM memories WHERE id = ?", (item_id,)).fetchone()
        if row is not None and row[0] == kind:
            return int(item_id)
    return None
