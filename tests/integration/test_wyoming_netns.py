"""Home Assistant's side of the Wyoming conversation agent, across real network namespaces: a
`serve` box with speech off (only the handle program on the Wyoming server) is found over mDNS
from another namespace, described, and answers two turns of one conversation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlean

from tests.integration.netns import Lab, can_use_netns

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(bool(can_use_netns()), reason=can_use_netns() or "ok"),
    pytest.mark.timeout(600),
]

CLIENT = Path(__file__).with_name("ha_wyoming_client.py")
WYOMING_PORT = 10200


def test_home_assistant_finds_the_agent_with_speech_off_and_continues_a_conversation(
    tmp_path: Path,
) -> None:
    with Lab(tmp_path, ["box", "ha"]) as lab:
        box, ha = lab.boxes["box"], lab.boxes["ha"]
        box.extra_env = {
            "MONGARS_WYOMING_PORT": str(WYOMING_PORT),
            "MONGARS_MESH": "false",
            "MONGARS_REPLY_MAX_TOKENS": "40",
        }
        box.start()
        lab.wait("the box serving", lambda: "wyoming server listening" in box.log(), 180)
        args = [sys.executable, str(CLIENT), ha.address, "01JHACONVERSATION"]
        turns = ["My name is Ada.", "What is my name?"]
        done = subprocess.run(
            ha.exec_args(*args, *turns), capture_output=True, text=True, timeout=400, check=False
        )
        assert done.returncode == 0, done.stderr + box.log()[-3000:]
        seen = json.loads(done.stdout)
        box.stop()
    assert seen["host"] == box.address and seen["port"] == WYOMING_PORT
    assert seen["name"].startswith("monGARS ")
    assert seen["handle"] == ["monGARS"] and seen["tts"] == 0 and seen["asr"] == 0
    for turn in seen["turns"]:
        # HA reads up to `handled`; the streamed events come first.
        assert turn["events"][0] == "handled-start" and turn["events"][-1] == "handled", turn
        assert turn["data"]["context"]["conversation_id"] == "01JHACONVERSATION"
        assert turn["data"]["text"].strip()
    db = sqlean.connect(str(box.data_dir / "mongars.db"))
    try:
        rows = db.execute(
            "SELECT m.role, m.content FROM conversation_links l"
            " JOIN users u ON u.id = l.user_id AND u.name = 'voice'"
            " JOIN messages m ON m.conversation_id = l.conversation_id"
            " WHERE l.external_id = '01JHACONVERSATION' ORDER BY m.id"
        ).fetchall()
    finally:
        db.close()
    assert [r[0] for r in rows] == ["user", "assistant", "user", "assistant"]
    assert [rows[0][1], rows[2][1]] == turns
