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
from typing import Any, Final, Protocol, TypeVar

from mongars_edge.logonce import WarnOnce
from mongars_edge.memory.db import Conn
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
            await _wait_at_most(self._changed, max(remaining, 0.001))

    async def wait_busy(self) -> None:
        while self._active == 0:
            self._changed.clear()
            await self._changed.wait()


async def _wait_at_most(event: asyncio.Event, seconds: float) -> None:
    """Wait for `event` or `seconds`, whichever comes first. Not `asyncio.wait_for`: on
    Python 3.11 it can swallow a cancellation that lands as the event fires, and a worker
    told to stop would then wait forever."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


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


async def _first(*waits: Awaitable[object]) -> None:
    """Return when the first of `waits` finishes; cancel the others."""
    futures = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in futures:
            future.cancel()


class _OthersOnly:
    """An IdleSignal over a scheduler that also runs our own background requests: when the
    scheduler tells queued (`depth`) from running (`active`) requests, ours are subtracted,
    so the worker yields to users and not to itself."""

    _POLL_S: Final = 0.05

    def __init__(self, signal: Any, worker: MemoryWorker) -> None:
        self._signal = signal
        self._worker = worker

    def _others(self) -> int:
        return int(self._signal.depth) + int(self._signal.active) - self._worker._own

    def is_idle(self) -> bool:
        return self._others() <= 0

    async def wait_idle(self) -> None:
        while not self.is_idle():  # noqa: ASYNC110 - counts have no event of their own
            await asyncio.sleep(self._POLL_S)

    async def wait_busy(self) -> None:
        # The scheduler's own busy event fires for our request too: poll the counts instead.
        while self._others() <= 0:  # noqa: ASYNC110
            await asyncio.sleep(self._POLL_S)


class MemoryWorker:
    """Extraction from new user messages, and idle-time work with the local model.

    Open with `async with worker.running()`. It finds new user messages itself (a watermark
    in `meta`, woken by the store on every write), so the chat pipeline needs no hook. With
    `generate=None` only the rule pass runs.
    """

    def __init__(
        self,
        store: MemoryStore,
        generate: Generate | None = None,
        idle: IdleSignal | None = None,
        *,
        consolidate_after_s: float = 6 * 3600.0,
        idle_grace_s: float = 30.0,
        poll_s: float = 60.0,
    ) -> None:
        if generate is not None and idle is None:
            raise ValueError("model work needs an IdleSignal to yield to users")
        self.store = store
        self.generate = generate
        self.idle = idle
        self.consolidate_after_s = consolidate_after_s
        self.idle_grace_s = idle_grace_s
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        store.add_listener(self._wake.set)
        self._warn = WarnOnce(log)
        self._scan_lock = asyncio.Lock()
        self._own = 0  # our own model requests in flight (they must not count as users)

    async def after_turn(self, user_id: int, message: Message) -> list[Memory]:
        """Optional hook after a user message is stored: scans at once instead of on wake-up,
        and returns the memories that message produced."""
        made = await self.scan()
        return [m for m in made if m.user_id == user_id and message.id in m.source_message_ids]

    async def scan(self, batch: int = 200) -> list[Memory]:
        """Read user messages written since the last scan: explicit statements become memories
        now, and each message is queued for the model to read when the box is idle."""
        async with self._scan_lock:
            return await self._scan(batch)

    async def _scan(self, batch: int) -> list[Memory]:
        made: list[Memory] = []
        while True:
            row = await self.store._readers.fetchone(
                "SELECT value FROM meta WHERE key = 'extract_upto'"
            )
            upto = int(row[0]) if row is not None else 0
            messages = await self.store._readers.fetchall(
                "SELECT id, user_id, content FROM messages WHERE id > ? AND role = 'user'"
                " ORDER BY id LIMIT ?",
                (upto, batch),
            )
            if not messages:
                return made
            for m in messages:
                for c in rule_candidates(m["content"]):
                    made.append(
                        await self.store.add_memory(
                            m["user_id"],
                            c.text,
                            c.kind,
                            importance=c.importance,
                            source_message_ids=[m["id"]],
                        )
                    )
            last = messages[-1]["id"]
            jobs = [(m["user_id"], m["id"], time.time()) for m in messages if m["content"].strip()]
            if self.generate is None:
                jobs = []

            def advance(conn: Conn, last: int = last, jobs: list[Any] = jobs) -> None:
                if jobs:
                    conn.executemany(
                        "INSERT INTO memory_jobs(kind, user_id, message_id, created)"
                        " VALUES ('extract', ?, ?, ?)",
                        jobs,
                    )
                conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('extract_upto', ?)",
                    (str(last),),
                )

            await self.store._writer.run(advance)

    def _idle(self) -> IdleSignal:
        assert self.idle is not None
        if hasattr(self.idle, "depth") and hasattr(self.idle, "active"):
            return _OthersOnly(self.idle, self)
        return self.idle

    async def _generate(self, prompt: str) -> str:
        assert self.generate is not None
        self._own += 1
        try:
            return await self.generate(prompt)
        finally:
            self._own -= 1

    async def pending_jobs(self) -> int:
        row = await self.store._readers.fetchone("SELECT count(*) FROM memory_jobs")
        return int(row[0])

    async def step(self) -> bool:
        """Do one unit of idle work; False when there is nothing to do. May raise Yielded."""
        if self.generate is None or self.idle is None:
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
        candidates = await yielding(self._idle(), model_candidates(self._generate, job["content"]))
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
            prompt = SUMMARY_PROMPT.format(transcript=transcript)
            summary = await yielding(self._idle(), self._generate(prompt))
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

    async def _quiet(self, signal: IdleSignal) -> bool:
        """True once no user request has come for `idle_grace_s`: the model runs in the
        same process as the users' requests, so it starts only after they have gone."""
        busy = asyncio.ensure_future(signal.wait_busy())
        try:
            done, _ = await asyncio.wait({busy}, timeout=self.idle_grace_s)
        finally:
            busy.cancel()
        return not done

    async def _model_turn(self) -> bool:
        """One bit of model work if the box is quiet; True if the loop should come back now."""
        signal = self._idle()
        if not signal.is_idle():
            await _first(self._wake.wait(), signal.wait_idle())
            return True
        if not await self._quiet(signal):
            return True
        return await self.step()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            again = False
            try:
                await self.scan()
                if self.generate is not None:
                    again = await self._model_turn()
                self._warn.forget("work")
            except Yielded:
                again = True  # interrupted; the job stays queued for the next quiet spell
            except Exception as exc:
                # Retried at the next quiet spell.
                self._warn("work", "memory work paused: %s", exc, trace=True)
            if not again:
                await _wait_at_most(self._wake, self.poll_s)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MemoryWorker]:
        task = asyncio.create_task(self._loop(), name="memory-sleep")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
