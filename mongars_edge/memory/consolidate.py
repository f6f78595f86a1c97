"""Sleep ("sommeil"): while the box is idle, the local model reads queued turns for memories
and summarises old conversations; the moment a request arrives, the work stops and yields.

Nothing here knows the inference engine: it gets a `Generate` (prompt in, text out) and an
`IdleSignal`. Work that was interrupted stays queued in the database and starts over later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Final, Protocol, TypeVar

from mongars_edge.memory.db import Conn
from mongars_edge.memory.errors import MemoryStoreError
from mongars_edge.memory.extract import Generate, model_candidates, rule_candidates
from mongars_edge.memory.records import Memory, Message
from mongars_edge.memory.store import MemoryStore

log = logging.getLogger(__name__)
T = TypeVar("T")

SUMMARY_PROMPT: Final = (
    "Here is part of a conversation between a user and an assistant.\n\n{transcript}\n\n"
    "In at most three short sentences, write what is worth remembering about the user "
    "(facts, preferences, plans). Write only those sentences.\n"
)
_CHUNK_MESSAGES: Final = 12
_MESSAGE_CHARS: Final = 400
_SUMMARY_CHARS: Final = 400


class IdleSignal(Protocol):
    """How the box tells background work whether users are waiting."""

    def is_idle(self) -> bool: ...

    async def wait_idle(self) -> None:
        """Return once no request has been running for a while."""

    async def wait_busy(self) -> None:
        """Return as soon as a request arrives (at once if one is running)."""


class Yielded(Exception):
    """Background work stopped because a request arrived; it will run again later."""


class ActivityTracker:
    """An IdleSignal: wrap each user request in `with tracker.request():`."""

    def __init__(self, idle_after_s: float = 30.0) -> None:
        self.idle_after_s = idle_after_s
        self._active = 0
        self._last = time.monotonic()
        self._changed = asyncio.Event()

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        self._active += 1
        self._changed.set()
        try:
            yield
        finally:
            self._active -= 1
            self._last = time.monotonic()
            self._changed.set()

    def is_idle(self) -> bool:
        return self._active == 0 and time.monotonic() - self._last >= self.idle_after_s

    async def wait_idle(self) -> None:
        while not self.is_idle():
            self._changed.clear()
            if self._active:
                await self._changed.wait()
                continue
            remaining = self.idle_after_s - (time.monotonic() - self._last)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(remaining, 0.001))

    async def wait_busy(self) -> None:
        while self._active == 0:
            self._changed.clear()
            await self._changed.wait()


async def yielding(idle: IdleSignal, work: Awaitable[T]) -> T:
    """Run `work` unless a request arrives first; then cancel it and raise Yielded."""
    task = asyncio.ensure_future(work)
    busy = asyncio.ensure_future(idle.wait_busy())
    try:
        done, _ = await asyncio.wait({task, busy}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        busy.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise Yielded


class MemoryWorker:
    """Extraction after each turn, and idle-time work. Open with `async with worker.running()`."""

    def __init__(
        self,
        store: MemoryStore,
        generate: Generate | None,
        idle: IdleSignal,
        *,
        consolidate_after_s: float = 6 * 3600.0,
        poll_s: float = 60.0,
    ) -> None:
        self.store = store
        self.generate = generate
        self.idle = idle
        self.consolidate_after_s = consolidate_after_s
        self.poll_s = poll_s
        self._wake = asyncio.Event()

    async def after_turn(self, user_id: int, message: Message) -> list[Memory]:
        """Call after a user message is stored: explicit statements become memories now,
        and the message is queued for the model to read when the box is idle."""
        if message.role != "user" or not message.content.strip():
            return []
        memories = [
            await self.store.add_memory(
                user_id, c.text, c.kind, importance=c.importance, source_message_ids=[message.id]
            )
            for c in rule_candidates(message.content)
        ]
        if self.generate is not None:
            await self.store._writer.run(
                lambda conn: conn.execute(
                    "INSERT INTO memory_jobs(kind, user_id, message_id, created)"
                    " VALUES ('extract', ?, ?, ?)",
                    (user_id, message.id, time.time()),
                )
            )
            self._wake.set()
        return memories

    async def pending_jobs(self) -> int:
        row = await self.store._readers.fetchone("SELECT count(*) FROM memory_jobs")
        return int(row[0])

    async def step(self) -> bool:
        """Do one unit of idle work; False when there is nothing to do. May raise Yielded."""
        if self.generate is None:
            return False
        if await self._extract_one(self.generate):
            return True
        return await self._consolidate_one(self.generate)

    async def _extract_one(self, generate: Generate) -> bool:
        job = await self.store._readers.fetchone(
            "SELECT j.id, j.user_id, m.id AS message_id, m.content FROM memory_jobs j"
            " JOIN messages m ON m.id = j.message_id AND m.user_id = j.user_id"
            " WHERE j.kind = 'extract' ORDER BY j.id LIMIT 1"
        )
        if job is None:
            # Jobs whose message is gone (deleted conversation) are dropped.
            await self.store._writer.run(
                lambda conn: conn.execute(
                    "DELETE FROM memory_jobs WHERE message_id IS NULL OR message_id NOT IN"
                    " (SELECT id FROM messages)"
                )
            )
            return False
        candidates = await yielding(self.idle, model_candidates(generate, job["content"]))
        for c in candidates:
            await self.store.add_memory(
                job["user_id"], c.text, c.kind, importance=c.importance,
                source_message_ids=[job["message_id"]],
            )  # fmt: skip
        await self.store._writer.run(
            lambda conn: conn.execute("DELETE FROM memory_jobs WHERE id = ?", (job["id"],))
        )
        log.debug("extracted %d memories from message %s", len(candidates), job["message_id"])
        return True

    async def _consolidate_one(self, generate: Generate) -> bool:
        before = time.time() - self.consolidate_after_s
        conv = await self.store._readers.fetchone(
            "SELECT c.id, c.user_id, c.consolidated_upto FROM conversations c"
            " WHERE c.updated < ? AND EXISTS (SELECT 1 FROM messages m WHERE"
            " m.conversation_id = c.id AND m.id > c.consolidated_upto)"
            " ORDER BY c.updated LIMIT 1",
            (before,),
        )
        if conv is None:
            return False
        rows = await self.store._readers.fetchall(
            "SELECT id, role, content FROM messages WHERE conversation_id = ? AND id > ?"
            " ORDER BY id LIMIT ?",
            (conv["id"], conv["consolidated_upto"], _CHUNK_MESSAGES),
        )
        kept = [r for r in rows if r["role"] in ("user", "assistant") and r["content"].strip()]
        upto = rows[-1]["id"]
        if any(r["role"] == "user" for r in kept):
            transcript = "\n".join(
                f"{r['role']}: {' '.join(r['content'].split())[:_MESSAGE_CHARS]}" for r in kept
            )
            summary = await yielding(
                self.idle, generate(SUMMARY_PROMPT.format(transcript=transcript))
            )
            summary = " ".join(summary.split())[:_SUMMARY_CHARS]
            if len(summary) >= 12:
                await self.store.add_memory(
                    conv["user_id"], summary, "summary", importance=0.4,
                    source_message_ids=[r["id"] for r in kept],
                )  # fmt: skip

        def advance(conn: Conn) -> None:
            conn.execute(
                "UPDATE conversations SET consolidated_upto = max(consolidated_upto, ?)"
                " WHERE id = ?",
                (upto, conv["id"]),
            )

        await self.store._writer.run(advance)
        return True

    async def _loop(self) -> None:
        while True:
            await self.idle.wait_idle()
            try:
                worked = await self.step()
            except Yielded:
                continue
            except MemoryStoreError as exc:
                log.warning("memory work paused: %s", exc)
                worked = False
            except Exception:
                log.exception("memory work failed; trying again later")
                worked = False
            if not worked:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MemoryWorker]:
        task = asyncio.create_task(self._loop(), name="memory-sleep")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
