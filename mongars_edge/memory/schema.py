# ruff: noqa: S608 - SQL is composed only from our own table names; values are bound.
"""Versioned schema: `PRAGMA user_version` counts the migrations applied, one transaction each.

Never edit a migration that has shipped: add a new one. Vector tables are not migrations,
because their dimension depends on the embedding model; `ensure_vectors` manages them.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from mongars_edge.memory.errors import SchemaTooNewError

log = logging.getLogger(__name__)

# unicode61 + remove_diacritics: "élève" matches "eleve"; French users type both.
_TOKENIZE: Final = "tokenize='unicode61 remove_diacritics 2'"

# External-content FTS5 tables are kept in step by triggers; the 'delete' command needs the old
# text, which the triggers have at hand. Cascaded deletes fire these triggers too.
_FTS_TRIGGERS: Final = """
CREATE TRIGGER {t}_fts_ai AFTER INSERT ON {t} BEGIN
  INSERT INTO {t}_fts(rowid, {c}) VALUES (new.id, new.{c});
END;
CREATE TRIGGER {t}_fts_ad AFTER DELETE ON {t} BEGIN
  INSERT INTO {t}_fts({t}_fts, rowid, {c}) VALUES ('delete', old.id, old.{c});
END;
CREATE TRIGGER {t}_fts_au AFTER UPDATE OF {c} ON {t} BEGIN
  INSERT INTO {t}_fts({t}_fts, rowid, {c}) VALUES ('delete', old.id, old.{c});
  INSERT INTO {t}_fts(rowid, {c}) VALUES (new.id, new.{c});
END;
"""

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: accounts, conversations, messages with full text.
    f"""
    CREATE TABLE users (
      id INTEGER PRIMARY KEY,
      name TEXT NOT NULL UNIQUE COLLATE NOCASE,
      password_hash TEXT,
      is_admin INTEGER NOT NULL DEFAULT 0,
      created REAL NOT NULL
    );
    CREATE TABLE api_tokens (
      id INTEGER PRIMARY KEY,
      token_hash TEXT NOT NULL UNIQUE,
      name TEXT NOT NULL,
      user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
      created REAL NOT NULL,
      last_used REAL,
      revoked REAL
    );
    CREATE INDEX api_tokens_user ON api_tokens(user_id);
    CREATE TABLE sessions (
      id_hash TEXT PRIMARY KEY,
      user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
      csrf TEXT NOT NULL,
      created REAL NOT NULL,
      expires REAL NOT NULL
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE conversations (
      id INTEGER PRIMARY KEY,
      user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
      title TEXT NOT NULL DEFAULT '',
      created REAL NOT NULL,
      updated REAL NOT NULL
    );
    CREATE INDEX conversations_user ON conversations(user_id, updated);
    CREATE TABLE messages (
      id INTEGER PRIMARY KEY,
      conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
      user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
      role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
      content TEXT NOT NULL,
      tokens INTEGER,
      model TEXT,
      adapter TEXT,
      latency_ms INTEGER,
      status TEXT NOT NULL DEFAULT 'complete' CHECK (status IN ('complete', 'partial', 'error')),
      created REAL NOT NULL
    );
    CREATE INDEX messages_conversation ON messages(conversation_id, id);
    CREATE INDEX messages_user ON messages(user_id, id);
    CREATE VIRTUAL TABLE messages_fts USING fts5(
      content, content='messages', content_rowid='id', {_TOKENIZE}
    );
    {_FTS_TRIGGERS.format(t="messages", c="content")}
    """,
    # 2: long-term memories per user, with full text; the embedding model in use.
    f"""
    CREATE TABLE memories (
      id INTEGER PRIMARY KEY,
      user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
      text TEXT NOT NULL,
      kind TEXT NOT NULL CHECK (kind IN ('fact', 'preference', 'summary')),
      source_message_ids TEXT NOT NULL DEFAULT '[]',
      importance REAL NOT NULL DEFAULT 0.5,
      created REAL NOT NULL,
      updated REAL NOT NULL
    );
    CREATE INDEX memories_user ON memories(user_id, updated);
    CREATE VIRTUAL TABLE memories_fts USING fts5(
      text, content='memories', content_rowid='id', {_TOKENIZE}
    );
    {_FTS_TRIGGERS.format(t="memories", c="text")}
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 3: rows waiting for a vector (the embedder failed or the model changed), a queue of
    # background jobs (extraction, consolidation), and how far each conversation is summarised.
    """
    ALTER TABLE memories ADD COLUMN embedded INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN embedded INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX memories_pending ON memories(embedded) WHERE embedded = 0;
    CREATE INDEX messages_pending ON messages(embedded) WHERE embedded = 0;
    ALTER TABLE conversations ADD COLUMN consolidated_upto INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE memory_jobs (
      id INTEGER PRIMARY KEY,
      kind TEXT NOT NULL CHECK (kind IN ('extract', 'consolidate')),
      user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
      message_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
      created REAL NOT NULL
    );
    """,
    # 4: tool calls: an assistant message's calls (OpenAI's JSON list), and the call a `tool`
    # message answers.
    """
    ALTER TABLE messages ADD COLUMN tool_calls TEXT;
    ALTER TABLE messages ADD COLUMN tool_call_id TEXT;
    """,
    # 5: conversations other programs name with ids of their own (a Home Assistant
    # conversation id, through the Wyoming agent), mapped to ours per user.
    """
    CREATE TABLE conversation_links (
      source TEXT NOT NULL,
      user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
      external_id TEXT NOT NULL,
      conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
      created REAL NOT NULL,
      PRIMARY KEY (source, user_id, external_id)
    );
    CREATE INDEX conversation_links_conversation ON conversation_links(conversation_id);
    """,
)

LATEST: Final = len(MIGRATIONS)


def version(conn: Any) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: Any, target: int = LATEST) -> int:
    """Bring the database to `target`, one transaction per step; returns the version found."""
    found = version(conn)
    if found > LATEST:
        raise SchemaTooNewError(
            f"the database is at schema version {found}, this program knows up to {LATEST}; "
            "upgrade monGARS Edge instead of downgrading it"
        )
    for number in range(found + 1, target + 1):
        log.info("migrating database to schema version %d", number)
        script = MIGRATIONS[number - 1]
        try:
            # executescript runs our BEGIN/COMMIT as written; the version bump is part of the
            # same transaction, so a crash leaves the old version with the old tables.
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return found


def _vec_table_sql(table: str, dim: int) -> str:
    # user_id is the partition key: a KNN query only visits that user's vectors, which is both
    # the speed (3 ms at 100k) and the wall between users.
    return (
        f"CREATE VIRTUAL TABLE {table} USING vec0("
        "item_id INTEGER PRIMARY KEY, user_id INTEGER PARTITION KEY, "
        f"embedding float[{dim}] distance_metric=cosine)"
    )


_VEC_TRIGGERS: Final = """
CREATE TRIGGER IF NOT EXISTS {t}_vec_ad AFTER DELETE ON {t} BEGIN
  DELETE FROM {t}_vec WHERE item_id = old.id;
END;
CREATE TRIGGER IF NOT EXISTS {t}_vec_au AFTER UPDATE OF {c} ON {t} BEGIN
  DELETE FROM {t}_vec WHERE item_id = old.id;
  UPDATE {t} SET embedded = 0 WHERE id = new.id;
END;
"""

VECTOR_TABLES: Final = (("memories", "text"), ("messages", "content"))


def get_meta(conn: Any, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def ensure_vectors(conn: Any, model_id: str, dim: int) -> bool:
    """Create the vector tables for this model; drop old vectors if the model changed.

    Returns True when existing vectors were dropped, i.e. every row now waits to be re-embedded:
    vectors of two models are never compared with each other.
    """
    old_model, old_dim = get_meta(conn, "embed_model"), get_meta(conn, "embed_dim")
    same = old_model == model_id and old_dim == str(dim)
    exists = (
        conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'memories_vec'").fetchone()
        is not None
    )
    if same and exists:
        return False
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, column in VECTOR_TABLES:
            conn.execute(f"DROP TRIGGER IF EXISTS {table}_vec_ad")
            conn.execute(f"DROP TRIGGER IF EXISTS {table}_vec_au")
            conn.execute(f"DROP TABLE IF EXISTS {table}_vec")
            conn.execute(_vec_table_sql(f"{table}_vec", dim))
            for statement in _VEC_TRIGGERS.format(t=table, c=column).split("END;"):
                if statement.strip():
                    conn.execute(statement + "END;")
            conn.execute(f"UPDATE {table} SET embedded = 0 WHERE embedded != 0")
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('embed_model', ?), ('embed_dim', ?)",
            (model_id, str(dim)),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if old_model is not None and not same:
        log.warning(
            "embedding model changed from %s to %s: every memory will be embedded again",
            old_model,
            model_id,
        )
    return old_model is not None and not same
