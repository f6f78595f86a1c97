"""Embedded memory: one SQLite file with vectors (sqlite-vec) and full text (FTS5), per user."""
