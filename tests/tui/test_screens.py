"""Hardware, memories, mesh and logs screens against a real daemon."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from textual.widgets import DataTable

from mongars_edge.tui.screens.hardware import HardwareScreen, local_temperature
from mongars_edge.tui.screens.logs import LogsScreen
from mongars_edge.tui.screens.memories import MemoriesScreen
from mongars_edge.tui.screens.mesh import NOT_AVAILABLE, MeshScreen
from mongars_edge.tui.widgets import ConfirmScreen
from tests.support.env import SYSROOTS, run_cli
from tests.support.server import Server
from tests.support.types import AppFactory
from tests.tui.pilot import screen_text, until


async def test_hardware_screen_shows_board_profile_and_live_rows(
    daemon: Server, make_app: AppFactory
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.daemon_state == "up")
        await pilot.press("f3")
        await until(pilot, lambda: isinstance(app.screen, HardwareScreen))
        board = str(app.health["board"])
        await until(pilot, lambda: board in screen_text(app))
        text = screen_text(app)
        for label in ("tokens/s", "queue", "temperature", "throttling", "tuning profile"):
            assert label in text
        assert "backend" in text  # a profile row from /health or /api/hardware


async def test_hardware_screen_names_the_tiers_as_models_list_does(
    daemon: Server, make_app: AppFactory
) -> None:
    listed = await asyncio.to_thread(run_cli, "models", "list", "--json")
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    app = make_app()
    async with app.run_test(size=(120, 50)) as pilot:
        await until(pilot, lambda: app.daemon_state == "up")
        await pilot.press("f3")
        # The model's own tier beside its id; the profile's is the largest this box runs.
        await until(pilot, lambda: app.health.get("model") in rows)
        tier = rows[str(app.health["model"])]["tier"]
        await until(pilot, lambda: f"({tier} tier)" in screen_text(app))
        await until(pilot, lambda: "largest tier" in screen_text(app))
        assert "model_tier" not in screen_text(app)


async def test_mesh_screen_says_not_available_on_a_no_mesh_daemon(
    daemon: Server, make_app: AppFactory
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.daemon_state == "up")
        await pilot.press("f4")
        await until(pilot, lambda: isinstance(app.screen, MeshScreen))
        mesh = app.screen
        assert isinstance(mesh, MeshScreen)
        await until(pilot, lambda: mesh.available is not None)
        if mesh.available is False:
            assert "Mesh not available" in screen_text(app)
            assert NOT_AVAILABLE.startswith("Mesh not available")
        else:  # the mesh API landed: a --no-mesh daemon lists no peers
            assert mesh.query_one(DataTable).row_count == 0


async def test_memories_screen_lists_searches_and_forgets(
    daemon: Server, make_app: AppFactory
) -> None:
    fact = "My violin teacher is called Odile Marchand."
    headers = {"Authorization": f"Bearer {daemon.token()()}"}
    async with httpx.AsyncClient(base_url=daemon.url, headers=headers, timeout=60) as http:
        made = await http.post("/api/memories", json={"text": fact, "kind": "fact"})
        assert made.status_code == 201, made.text
        memory_id = str(made.json()["id"])
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.daemon_state == "up")
            await pilot.press("f2")
            await until(pilot, lambda: isinstance(app.screen, MemoriesScreen))
            table = app.screen.query_one(DataTable)
            await until(pilot, lambda: memory_id in [r.value for r in table.rows])
            await pilot.press("ctrl+f", *"violin", "enter")
            await until(pilot, lambda: "matching 'violin'" in screen_text(app))
            assert "Odile Marchand" in screen_text(app)
            table.focus()
            table.move_cursor(row=table.get_row_index(memory_id))
            await pilot.press("delete")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: memory_id not in [r.value for r in table.rows])
        left = (await http.get("/api/memories")).json()["data"]
        assert all(str(m["id"]) != memory_id for m in left)


async def test_a_memory_search_also_shows_past_messages(
    chat_api: Server, make_app: AppFactory
) -> None:
    said = "Our oboe rehearsal moved to the Mile End library."
    headers = {"Authorization": f"Bearer {chat_api.token()()}"}
    async with httpx.AsyncClient(base_url=chat_api.url, headers=headers, timeout=120) as http:
        body = {
            "model": "default",
            "messages": [{"role": "user", "content": said}],
            "max_tokens": 1,
        }
        sent = await http.post("/v1/chat/completions", json=body | {"conversation_id": "new"})
        assert sent.status_code == 200, sent.text
        app = make_app()
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.daemon_state == "up")
            await pilot.press("f2")
            await until(pilot, lambda: isinstance(app.screen, MemoriesScreen))
            await pilot.press("ctrl+f", *"oboe", "enter")
            await until(pilot, lambda: "messages matching 'oboe'" in screen_text(app))
            assert "msg user" in screen_text(app) and "Mile End" in screen_text(app)
            table = app.screen.query_one(DataTable)
            table.focus()
            await pilot.press("delete")  # a message is not forgotten from here
            await pilot.pause()
            assert not isinstance(app.screen, ConfirmScreen)


async def test_logs_screen_shows_connection_events(daemon: Server, make_app: AppFactory) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.daemon_state == "up")
        await pilot.press("f5")
        await until(pilot, lambda: isinstance(app.screen, LogsScreen))
        await until(pilot, lambda: "connected: " in screen_text(app))
        assert "TUI events" in screen_text(app)


@pytest.mark.parametrize(
    ("board", "expected"),
    [("pi5-8gb", 52.35), ("jetson-agx-orin-64gb", 43.937), ("x86-vm-amx", None)],
)
def test_live_temperature_reads_the_hottest_zone(board: str, expected: float | None) -> None:
    # Recorded sysroots of real boards (tests/fixtures/sysroots).
    assert local_temperature(SYSROOTS / board) == expected
