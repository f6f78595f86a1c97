"""The command line: builds Settings, then a Runtime, then hands off. Errors become exit codes.

One module per family of commands; each registers its commands with `add_commands(main)` and
imports nothing heavy until a command runs, so every call starts fast.
"""

from __future__ import annotations

import click

from mongars_edge import __version__
from mongars_edge.cli import accounts, app, local, memory, mesh, models, speech
from mongars_edge.cli.base import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mongars-edge")
def main() -> None:
    """monGARS Edge: a private assistant in a box on your own network."""


for _module in (app, mesh, models, accounts, memory, speech, local):
    _module.add_commands(main)

__all__ = ["main"]
