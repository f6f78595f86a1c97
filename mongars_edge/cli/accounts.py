"""`mongars-edge users add|list` and `tokens create`: accounts, offline on the data directory."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from mongars_edge.cli.base import common_options, make_settings


def _store_path(settings: Any) -> Path:
    from mongars_edge.datadir import DataDir

    return DataDir(settings.resolved_data_dir()).database


def add_commands(main: click.Group) -> None:
    """Register the account commands on the CLI group (heavy imports happen when run)."""

    @main.group("users")
    def users() -> None:
        """Accounts of this box."""

    @users.command("add")
    @common_options
    @click.argument("name")
    @click.option("--admin", is_flag=True, help="Make the user an administrator.")
    @click.option(
        "--password-stdin", is_flag=True, required=True, help="Read the password from stdin."
    )
    def users_add(
        config_path: Path | None, name: str, admin: bool, password_stdin: bool, **flags: Any
    ) -> None:
        """Create a user (works while the server runs, or offline)."""
        from mongars_edge.memory.store import MemoryStore
        from mongars_edge.web.auth import check_name, hash_password

        settings = make_settings(config_path, **flags)
        password = sys.stdin.readline().rstrip("\r\n")
        check_name(name)
        password_hash = hash_password(password)

        async def run() -> None:
            async with MemoryStore.open(_store_path(settings)) as store:
                await store.create_user(name, password_hash, is_admin=admin)

        asyncio.run(run())
        click.echo(f"user {name!r} created{' (administrator)' if admin else ''}")

    @users.command("list")
    @common_options
    def users_list(config_path: Path | None, **flags: Any) -> None:
        """List the users."""
        from mongars_edge.memory.store import MemoryStore

        settings = make_settings(config_path, **flags)

        async def run() -> list[Any]:
            async with MemoryStore.open(_store_path(settings)) as store:
                return await store.list_users()

        found = asyncio.run(run())
        if not found:
            click.echo("no users yet (add one: mongars-edge users add NAME --password-stdin)")
        for user in found:
            click.echo(f"{user.id:>4}  {user.name}{'  (admin)' if user.is_admin else ''}")

    @main.group("tokens")
    def tokens() -> None:
        """API bearer tokens."""

    @tokens.command("create")
    @common_options
    @click.argument("name")
    @click.option("--label", default="cli", show_default=True, help="What the token is for.")
    def tokens_create(config_path: Path | None, name: str, label: str, **flags: Any) -> None:
        """Print a new API bearer token for the user NAME (shown once, stored hashed)."""
        from mongars_edge.memory.store import MemoryStore
        from mongars_edge.web.auth import digest, new_api_token

        settings = make_settings(config_path, **flags)
        token = new_api_token()

        async def run() -> None:
            async with MemoryStore.open(_store_path(settings)) as store:
                user = await store.require_user(name)
                await store.create_token(user.id, label, digest(token))

        asyncio.run(run())
        click.echo(token)
