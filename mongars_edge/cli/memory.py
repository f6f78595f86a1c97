"""`mongars-edge memory search USER "text"`, `memory list USER`, `memory forget USER ID`,
`memory export USER`: a user's memory, offline on the data directory (or beside the server)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import click

from mongars_edge.cli.base import common_options, make_settings

_FLUSH_AT_MOST = 200


def _db_path(settings: Any) -> Path:
    from mongars_edge.datadir import DataDir

    data = DataDir(settings.resolved_data_dir())
    if not data.database.exists():
        from mongars_edge.errors import NotFoundError

        raise NotFoundError(
            f"no database in {data.root}; choose the data directory with --data-dir"
        )
    return data.database


def _one_line(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def add_commands(main: click.Group) -> None:
    """Register the memory commands (the store and the model load only when one runs)."""

    @main.group("memory")
    def memory() -> None:
        """What the box remembers about each user."""

    @memory.command("search")
    @common_options
    @click.argument("user")
    @click.argument("text")
    @click.option("--limit", type=click.IntRange(1, 100), default=8, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per hit.")
    def search(
        config_path: Path | None, user: str, text: str, limit: int, as_json: bool, **flags: Any
    ) -> None:
        """Recall USER's memories and past messages most relevant to TEXT."""
        from dataclasses import asdict

        from mongars_edge.memory.embed import create_embedder
        from mongars_edge.memory.store import MemoryStore

        settings = make_settings(config_path, **flags)

        async def run() -> list[Any]:
            embedder = create_embedder(settings.embed_model)
            try:
                async with MemoryStore.open(_db_path(settings), embedder, background=False) as s:
                    owner = await s.require_user(user)
                    # Rows written without the model (offline commands, a model change) wait
                    # for vectors; embed a few now, leave a large backlog to the server.
                    pending = await s.pending_vectors()
                    if pending <= _FLUSH_AT_MOST:
                        await s.flush_vectors()
                    else:
                        click.echo(f"note: {pending} rows still wait for vectors", err=True)
                    return await s.recall(owner.id, text, limit=limit)
            finally:
                await embedder.close()

        hits = asyncio.run(run())
        if not hits:
            click.echo("nothing recalled", err=True)
        for hit in hits:
            if as_json:
                click.echo(json.dumps(asdict(hit), ensure_ascii=False))
                continue
            where = f"conversation {hit.conversation_id}" if hit.conversation_id else hit.kind
            click.echo(
                f"{hit.score:.3f}  {hit.source} {hit.id:<6} {where:<16} {_one_line(hit.text)}"
            )

    @memory.command("list")
    @common_options
    @click.argument("user")
    @click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
    def list_cmd(config_path: Path | None, user: str, limit: int, **flags: Any) -> None:
        """USER's memories, most recently updated first."""
        from mongars_edge.memory.store import MemoryStore

        settings = make_settings(config_path, **flags)

        async def run() -> list[Any]:
            async with MemoryStore.open(_db_path(settings)) as store:
                owner = await store.require_user(user)
                return await store.list_memories(owner.id, limit=limit)

        for m in asyncio.run(run()):
            click.echo(f"{m.id:<6} {m.kind:<10} {m.importance:.2f}  {_one_line(m.text)}")

    @memory.command("forget")
    @common_options
    @click.argument("user")
    @click.argument("memory_id", type=int)
    def forget(config_path: Path | None, user: str, memory_id: int, **flags: Any) -> None:
        """Delete one of USER's memories (its vector and index entries go with it)."""
        from mongars_edge.memory.store import MemoryStore

        settings = make_settings(config_path, **flags)

        async def run() -> None:
            async with MemoryStore.open(_db_path(settings)) as store:
                owner = await store.require_user(user)
                await store.delete_memory(owner.id, memory_id)

        asyncio.run(run())
        click.echo(f"memory {memory_id} forgotten")

    @memory.command("export")
    @common_options
    @click.argument("user")
    @click.option(
        "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Write to a file."
    )
    def export(config_path: Path | None, user: str, output: Path | None, **flags: Any) -> None:
        """Everything the box holds about USER, as JSON (no password or token hashes)."""
        from mongars_edge.memory.store import MemoryStore

        settings = make_settings(config_path, **flags)

        async def run() -> dict[str, Any]:
            async with MemoryStore.open(_db_path(settings)) as store:
                owner = await store.require_user(user)
                return await store.export_user(owner.id)

        text = json.dumps(asyncio.run(run()), ensure_ascii=False, indent=2)
        if output is None:
            click.echo(text)
            return
        # Personal data: owner-only from the first byte, whatever the umask.
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        click.echo(f"exported {user!r} to {output}", err=True)
