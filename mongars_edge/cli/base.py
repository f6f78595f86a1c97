"""What every command shares: the error-catching group, the common options, Settings."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from mongars_edge import datadir
from mongars_edge.errors import MongarsError
from mongars_edge.localbox import ask_data_dir, local_url, same_place, serving_url
from mongars_edge.logsetup import configure_logging
from mongars_edge.settings import Settings, load_settings

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class Group(click.Group):
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


def common_options(func: F) -> F:
    """Options every command accepts; they become Settings through `make_settings`."""
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


def make_settings(config_path: Path | None, **flags: Any) -> Settings:
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
