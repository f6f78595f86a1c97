"""Errors raised by the memory store; the CLI and web edges turn them into one line / a status."""

from __future__ import annotations

from mongars_edge.errors import MongarsError


class MemoryStoreError(MongarsError):
    """The database could not do what was asked; the message says what to do."""

    kind = "storage_error"


class StorageFullError(MemoryStoreError, OSError):
    """The disk holding the database is full; nothing was written."""

    http_status = 507
    kind = "storage_full"


class SchemaTooNewError(MemoryStoreError):
    """The database was written by a newer monGARS Edge; refusing to touch it."""

    exit_code = 2


class EmbeddingError(MemoryStoreError):
    """The embedding model failed; no vector was invented in its place."""

    http_status = 503
    kind = "embedding_unavailable"
