"""The command line: builds Settings, then a Runtime, then hands off. Errors become exit codes."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from mongars_edge import __version__, datadir
from mongars_edge.errors import MongarsError
from mongars_edge.localbox import (
    ask_data_dir,
    local_url,
    remove_marker,
    same_place,
    serving_url,
    write_marker,
)
from mongars_edge.logsetup import configure_logging
from mongars_edge.settings import Settings, describe, load_settings

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    """Turns every error into one clear line and an exit status; users never see a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MongarsError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            ctx.exit(130)
        except Exception as exc:  # the last line of defence for users
            log.debug("unexpected error", exc_info=True)
            click.echo(
                f"internal error: {type(exc).__name__}: {exc}\n"
                "Run again with --log-level debug for details, and report it if it repeats.",
                err=True,
            )
            ctx.exit(1)


def _common_options(func: F) -> F:
    """Options every command accepts; they become Settings through `_settings`."""
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Config file (TOML). Default: /etc/mongars-edge/config.toml when present.",
        ),
        click.option(
            "--data-dir",
            type=click.Path(path_type=Path),
            help="Data directory. Default: the one of the box serving on this machine, else "
            "/var/lib/mongars-edge as root, else ~/.local/share/mongars-edge.",
        ),
        click.option(
            "--log-level",
            type=click.Choice(["debug", "info", "warning", "error"]),
            help="Logging threshold.",
        ),
        click.option("--log-format", type=click.Choice(["plain", "json"]), help="Log line format."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _settings(config_path: Path | None, **flags: Any) -> Settings:
    """Build the one Settings object, configure logging, and check the data dir for the command.

    Every command but `serve` first asks the box serving on this machine (host and port
    settings) where it keeps its data: with no data dir chosen, the command acts on that
    one; with another one chosen, it says that they differ.
    """
    settings = load_settings(config_path=config_path, cli=flags)
    configure_logging(settings.log_level, settings.log_format)
    command = _command_name()
    if command != "serve":
        # The TUI and chat say themselves what they found (tui.app.find_daemon).
        settings = _follow_running_box(settings, quiet=command in ("tui", "chat"))
    give_back = datadir.check(settings.resolved_data_dir(), command)
    ctx = click.get_current_context(silent=True)
    if give_back is not None and ctx is not None:
        ctx.find_root().call_on_close(give_back)
    return settings


def _command_name() -> str:
    """The running command without the program name, e.g. "peers remove"."""
    ctx = click.get_current_context(silent=True)
    names: list[str] = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def _follow_running_box(settings: Settings, *, quiet: bool = False) -> Settings:
    mine = settings.resolved_data_dir()
    if settings.data_dir is not None and serving_url(mine) is not None:
        return settings  # the chosen data dir is a running box's own (maybe on another port)
    url = local_url(settings.host, settings.port)
    theirs = ask_data_dir(url)
    if theirs is None or same_place(mine, theirs):
        return settings
    if settings.data_dir is None:  # chosen nowhere: act on the box that is running
        if not quiet:
            click.echo(
                f"note: using {theirs}, the data dir of the box serving on {url} "
                "(--data-dir chooses another)",
                err=True,
            )
        return settings.replace(data_dir=theirs)
    if not quiet:
        click.echo(
            f"note: the box serving on {url} keeps its data in {theirs}, not in {mine}; "
            f"pass --data-dir {theirs} to act on it",
            err=True,
        )
    return settings


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mongars-edge")
def main() -> None:
    """monGARS Edge: a private assistant in a box on your own network."""


# Settings whose `serve` flags are written out above; every other setting gets a generated one.
_HAND_MADE_FLAGS = frozenset(
    {"data_dir", "log_level", "log_format", "host", "port", "model", "mesh", "speech"}
)


def _setting_options(func: F) -> F:
    """One `serve` flag per remaining setting (`mesh_port` -> `--mesh-port`), help from Settings."""
    types: dict[str, Any] = {"int": int, "float": float, "Path": click.Path(path_type=Path)}
    for item in reversed(describe()):
        name = item["name"]
        if name in _HAND_MADE_FLAGS:
            continue
        kind = str(Settings.__dataclass_fields__[name].type)
        choices = item["choices"]
        option = click.option(
            "--" + name.replace("_", "-"),
            name,
            type=click.Choice(choices) if choices else types.get(kind, str),
            help=item["help"],
        )
        func = option(func)
    return func


@main.command()
@_common_options
@click.option("--host", help="Address to listen on (0.0.0.0 for the whole LAN).")
@click.option("--port", type=int, help="HTTP port.")
@click.option("--model", help="Catalog id or GGUF path of the chat model.")
@click.option("--mesh/--no-mesh", "mesh", default=None, help="Join the mesh (default) or not.")
@click.option(
    "--no-speech", "speech", flag_value="off", default=None, help="Turn text-to-speech off."
)
@click.option(
    "--speech",
    "speech_mode",
    type=click.Choice(["auto", "on", "off"]),
    help="Text-to-speech: auto (decided by the hardware profile), on or off.",
)
@_setting_options
def serve(config_path: Path | None, speech_mode: str | None, **flags: Any) -> None:
    """Run the appliance: web page, API, inference, memory, speech and mesh.

    Every setting is also a flag here (docs/settings.md lists them).
    """
    if speech_mode is not None:
        flags["speech"] = speech_mode
    settings = _settings(config_path, **flags)
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    import uvicorn  # imported here: other commands should start fast

    from mongars_edge.runtime import Runtime
    from mongars_edge.telemetry import serve_with_notify
    from mongars_edge.web import create_app

    # Bind before loading anything: a busy port is a clear error in a second, not a traceback
    # after the model has loaded.
    listener = _listen(settings.host, settings.port)
    async with Runtime(settings) as runtime:
        url = local_url(settings.host, listener.getsockname()[1])
        await asyncio.to_thread(write_marker, runtime.data_dir, url)
        config = uvicorn.Config(
            create_app(runtime),
            fd=listener.fileno(),
            log_config=None,
            timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout_s)),
            server_header=False,
        )
        server = uvicorn.Server(config)
        # uvicorn re-raises the stop signal after shutting down; with the default handler in
        # place that would kill us before the Runtime closes. Ours only records it.
        received: list[int] = []
        previous = {
            sig: signal.signal(sig, lambda num, _frame: received.append(num))
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            # READY=1 for systemd once uvicorn listens; STOPPING=1 on the way out.
            await serve_with_notify(server, runtime.watchdog.notifier)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            await asyncio.to_thread(remove_marker, runtime.data_dir)
    listener.close()
    log.info("stopped cleanly")


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise MongarsError(
            f"cannot listen on {host}:{port}: {exc.strerror} "
            "(is another server using that port? choose another with --port)"
        ) from None


@main.command("probe")
@_common_options
@click.option("--json", "as_json", is_flag=True, help="Print facts and profile as JSON.")
@click.option(
    "--sysroot",
    type=click.Path(path_type=Path, file_okay=False),
    help="Read /proc, /sys and /etc under this directory instead of / (tests, recordings).",
)
def probe_cmd(config_path: Path | None, as_json: bool, **flags: Any) -> None:
    """Show what this box is and how the engine will be tuned for it."""
    from mongars_edge.hardware.probe import probe
    from mongars_edge.inference.manager import load_profile

    settings = _settings(config_path, **flags)
    data_dir = settings.resolved_data_dir()
    facts = probe(settings.sysroot, data_dir)
    profile = load_profile(facts, data_dir)
    if as_json:
        payload = {"facts": facts.to_dict(), "profile": profile.to_dict()}
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    click.echo(f"board       {facts.board} ({facts.board_model or 'no model string'})")
    click.echo(f"cpu         {facts.cpu_count} x {facts.arch} {facts.cpu_model}")
    click.echo(f"memory      {facts.mem_total_mb} MB, swap {facts.swap_total_mb} MB")
    click.echo(f"gpu         {'CUDA' if facts.cuda else 'none'}")
    click.echo(f"storage     {facts.storage}")
    for warning in facts.warnings:
        click.echo(f"warning     {warning}")
    click.echo(f"\nprofile ({profile.source}):")
    for key, value in profile.to_dict().items():
        if key in ("reasons", "source"):
            continue
        reason = profile.reasons.get(key, "")
        click.echo(f"  {key:<16} {value!s:<24} {reason}")


@click.command("tui")
@_common_options
@click.option("--url", help="Daemon URL (default: this box, from the host and port settings).")
@click.option(
    "--token",
    envvar="MONGARS_TUI_TOKEN",
    help="API bearer token, or $MONGARS_TUI_TOKEN (out of `ps`). Default: the local admin token.",
)
def tui_cmd(config_path: Path | None, url: str | None, token: str | None, **flags: Any) -> None:
    """Open the terminal UI: chat, memories, hardware, mesh and logs."""
    from mongars_edge.tui.app import run_tui  # Textual is heavy; other commands start fast

    run_tui(_settings(config_path, **flags), url=url, token=token)


main.add_command(tui_cmd)


# pair, pair --join CODE, peers, peers remove ID (the mesh; imports nothing heavy until run).
from mongars_edge.mesh.commands import add_commands as _add_mesh_commands  # noqa: E402

_add_mesh_commands(main, _common_options, _settings)

# models list|pull|rm, adapters list|add|rm, bench (imports nothing heavy until run).
from mongars_edge.inference.commands import add_commands as _add_inference_commands  # noqa: E402

_add_inference_commands(main)

# users add|list, tokens create (accounts; offline on the data directory).
from mongars_edge.web.commands import add_commands as _add_account_commands  # noqa: E402

_add_account_commands(main, _common_options, _settings)

# memory search|list|forget|export (a user's memory; offline on the data directory).
from mongars_edge.memory.commands import add_commands as _add_memory_commands  # noqa: E402

_add_memory_commands(main, _common_options, _settings)

# say, listen (speech; models load only when run).
from mongars_edge.speech.commands import add_commands as _add_speech_commands  # noqa: E402

_add_speech_commands(main, _common_options, _settings)

# chat "text", doctor (clients of this box).
from mongars_edge.local_commands import add_commands as _add_local_commands  # noqa: E402

_add_local_commands(main, _common_options, _settings)
