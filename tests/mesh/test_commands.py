"""`pair` and `peers` on a box that is not serving (offline, no network)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from mongars_edge.cli import main
from mongars_edge.mesh.identity import Identity
from mongars_edge.mesh.members import MemberFile


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_peers_on_a_box_that_is_not_serving(data_dir: Path) -> None:
    code, out = run("peers", "--data-dir", str(data_dir))
    assert code == 0
    assert Identity.load_or_create(data_dir).node_id in out
    assert "not serving" in out


def test_pair_needs_a_serving_box_and_a_well_formed_code(data_dir: Path) -> None:
    code, out = run("pair", "--data-dir", str(data_dir))
    assert code == 3 and "not serving" in out
    code, out = run("pair", "--join", "12", "--peer", "127.0.0.1:1", "--data-dir", str(data_dir))
    assert code == 3 and "8 digits" in out
    code, out = run("pair", "--join", "1234-5678", "--data-dir", str(data_dir))
    assert code == 3 and "--peer" in out


def test_peers_remove_revokes_a_member(data_dir: Path) -> None:
    other = Identity.generate()
    with MemberFile(data_dir).changing() as state:
        state.pin(other.node_id, other.verify_key)
    # The options after the subcommand, as the README appends them (and before, as before).
    code, out = run("peers", "remove", other.node_id[:8], "--data-dir", str(data_dir))
    assert code == 0 and "revoked" in out
    state = MemberFile(data_dir).read()
    assert state.key_of(other.node_id) is None and other.node_id in state.revoked
    assert state.records[other.node_id].action == "revoke"
    code, out = run("peers", "--data-dir", str(data_dir), "remove", other.node_id)
    assert code != 0 and "no single member" in out
