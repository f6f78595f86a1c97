"""The command line's shape: the shared options on every command, a `serve` flag per setting."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from mongars_edge.cli import main
from mongars_edge.settings import setting_names


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            if command.invoke_without_command:  # `peers` runs on its own too
                yield " ".join((*path, name)), command
            yield from _leaves(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


LEAVES = dict(_leaves(main))


def test_the_walk_finds_every_command() -> None:
    # A new command is checked as soon as it exists; these are the contract's names.
    for name in ("serve", "users add", "tokens create", "peers", "peers remove", "pair", "tui"):
        assert name in LEAVES
    assert len(LEAVES) >= 25


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_every_command_takes_data_dir_and_config_after_its_name(name: str) -> None:
    # The README says to append `--data-dir .data` to the commands: that place works for all.
    options = {opt for param in LEAVES[name].params for opt in getattr(param, "opts", [])}
    assert {"--data-dir", "--config", "--log-level", "--log-format"} <= options, name


def test_every_setting_is_a_serve_flag() -> None:
    flags = {
        opt.lstrip("-").replace("-", "_")
        for param in LEAVES["serve"].params
        for opt in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
    }
    flags = {f.removeprefix("no_") for f in flags}
    assert set(setting_names()) <= flags


def test_a_generated_serve_flag_is_validated_like_the_setting() -> None:
    args = ["serve", "--mesh-port", "70000", "--data-dir", "/nonexistent"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "mesh_port" in result.output and "70000" in result.output
    assert "Traceback" not in result.output
