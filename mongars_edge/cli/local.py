"""`chat` and `doctor`: small clients of this box for scripts and support."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from mongars_edge.cli.base import common_options, make_settings


def add_commands(main: click.Group) -> None:
    """Register the commands on the CLI group."""

    @main.command("chat")
    @common_options
    @click.argument("text")
    @click.option("--url", help="Daemon URL (default: this box, from the host and port settings).")
    @click.option("--token", help="API bearer token (default: the local admin token).")
    @click.option("--conversation", help="Continue this conversation id.")
    def chat_cmd(
        config_path: Path | None,
        text: str,
        url: str | None,
        token: str | None,
        conversation: str | None,
        **flags: Any,
    ) -> None:
        """Ask the running box something and stream the answer ("-" reads stdin)."""
        settings = make_settings(config_path, **flags)
        if text == "-":
            text = sys.stdin.read()
        if not text.strip():
            raise click.UsageError("the message is empty")
        asyncio.run(_chat(settings, text, url, token, conversation))

    @main.command("doctor")
    @common_options
    def doctor_cmd(config_path: Path | None, **flags: Any) -> None:
        """Check this box (data dir, space, model, vectors, speech) and say how to fix problems."""
        from mongars_edge.doctor import healthy, run_checks

        results = run_checks(make_settings(config_path, **flags))
        for check in results:
            mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
            click.echo(f"{mark} {check.name:<16} {check.detail}")
            if not check.ok and check.fix:
                click.echo(f"     {'':<16} fix: {check.fix}")
        if not healthy(results):
            sys.exit(1)


async def _chat(
    settings: Any, text: str, url: str | None, token: str | None, conversation: str | None
) -> None:
    from mongars_edge.localbox import local_url, serving_url
    from mongars_edge.tui.app import find_daemon
    from mongars_edge.tui.client import DaemonClient, LocalToken

    source: str | LocalToken | None = token
    if token is None:
        url, source = find_daemon(settings, url)
    elif url is None:
        url = serving_url(settings.resolved_data_dir()) or local_url(settings.host, settings.port)
    client = DaemonClient(url, source)
    try:
        conversation_id = conversation
        async for delta in client.stream_chat(
            # "new" asks the box to keep the exchange as a conversation the user can continue.
            [{"role": "user", "content": text}],
            conversation_id=conversation or "new",
        ):
            if delta.text:
                click.echo(delta.text, nl=False)
            conversation_id = delta.conversation_id or conversation_id
        click.echo()
        if conversation_id:
            click.echo(f"conversation: {conversation_id}", err=True)
    finally:
        await client.aclose()
