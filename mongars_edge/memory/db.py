"""Connections: one function prepares them all; one writer thread fed by a queue; pooled readers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import aiosqlite
import sqlean
import sqlite_vec

from mongars_edge.memory.errors import MemoryStoreError, StorageFullError

log = logging.getLogger(__name__)

T = TypeVar("T")
Conn = Any  # a sqlean.Connection; sqlean ships no type information

_SQLITE_FULL: Final = 13
_SQLITE_IOERR: Final = 10
_SQLITE_CORRUPT: Final = 11


def connect(path: Path) -> Conn:
    """A prepared connection in autocommit mode: we write BEGIN/COMMIT ourselves."""
    conn = sqlean.connect(str(path), isolation_level=None, timeout=10.0)
    prepare_connection(conn)
    return conn


def prepare_connection(conn: Conn) -> None:
    """The one place that loads extensions and sets PRAGMAs, for every connection."""
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    conn.enable_load_extension(False)
    conn.row_factory = sqlean.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA journal_mode = WAL")
    # WAL + synchronous=FULL: every COMMIT fsyncs the WAL before it returns. With NORMAL a
    # commit survives a killed process but the last transactions can vanish on a power cut
    # (the WAL is synced only at checkpoints), and an appliance on an SD card gets unplugged.
    # The issue promises that an acknowledged turn survives power loss, so we pay one fsync
    # per commit (a few ms on an SD card; turns come seconds apart, bulk work is batched).
    conn.execute("PRAGMA synchronous = FULL")


def translate(exc: BaseException) -> BaseException:
    """SQLite and OS errors become errors that tell the user what happened and what to do."""
    code = getattr(exc, "sqlite_errorcode", None)
    code = code & 0xFF if isinstance(code, int) else None
    message = str(exc)
    if (
        code == _SQLITE_FULL
        or "disk is full" in message
        or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC)
    ):
        return StorageFullError(
            "the disk holding the database is full; nothing was written. Free some space "
            "(old models, logs) and try again"
        )
    if code == _SQLITE_IOERR:
        return MemoryStoreError(f"the storage failed while writing ({message}); check the disk")
    if code == _SQLITE_CORRUPT:
        return MemoryStoreError(f"the database file is damaged ({message}); restore a backup")
    return exc


class Writer:
    """Owns the only writing connection in a thread; each job is one BEGIN IMMEDIATE transaction."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name="db-writer", daemon=True)

    async def start(self) -> None:
        self._thread.start()
        await asyncio.wrap_future(self._ready)

    def _main(self) -> None:
        try:
            conn = connect(self._path)
        except BaseException as exc:
            self._ready.set_exception(translate(exc))
            return
        self._ready.set_result(None)
        try:
            while (job := self._jobs.get()) is not None:
                fn, future, transaction = job
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(self._run(conn, fn, transaction))
                except BaseException as exc:
                    future.set_exception(translate(exc))
        finally:
            conn.close()

    @staticmethod
    def _run(conn: Conn, fn: Callable[[Conn], Any], transaction: bool) -> Any:
        if not transaction:
            return fn(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back (e.g. disk full during COMMIT).
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    async def run(self, fn: Callable[[Conn], T], *, transaction: bool = True) -> T:
        """Run `fn(conn)` in the writer thread; committed when this returns."""
        if not self._thread.is_alive():
            raise MemoryStoreError("the database writer is stopped")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future, transaction))
        # Shielded: once queued, the transaction runs to its end even if the caller gives up,
        # so a cancelled request never leaves half a turn behind.
        return await asyncio.shield(asyncio.wrap_future(future))

    async def stop(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)


class Readers:
    """A small pool of read-only aiosqlite connections (WAL lets them read while we write)."""

    def __init__(self, path: Path, size: int) -> None:
        self._path = path
        self._size = size
        self._all: list[aiosqlite.Connection] = []
        self._free: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()

    def _connect(self) -> Conn:
        conn = connect(self._path)
        conn.execute("PRAGMA query_only = ON")
        return conn

    async def start(self) -> None:
        for _ in range(self._size):
            conn = await aiosqlite.Connection(self._connect, 64)
            self._all.append(conn)
            self._free.put_nowait(conn)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosqlite.Connection]:
        conn = await self._free.get()
        try:
            yield conn
        finally:
            self._free.put_nowait(conn)

    async def fetchall(self, sql: str, params: Any = ()) -> list[Any]:
        async with self.connection() as conn:
            try:
                return list(await conn.execute_fetchall(sql, params))
            except sqlean.DatabaseError as exc:
                raise translate(exc) from exc

    async def fetchone(self, sql: str, params: Any = ()) -> Any:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def stop(self) -> None:
        for conn in self._all:
            await conn.close()
        self._all.clear()
