"""SIGKILL a writer at random moments: the file stays sound and every acknowledged turn is there."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mongars_edge.memory.db import connect

pytestmark = pytest.mark.model  # a box with the real embedder, killed mid-write

CHILD = Path(__file__).with_name("crash_child.py")
REPO = Path(__file__).resolve().parents[2]
KILLS = int(os.environ.get("CRASH_KILLS", "24"))


def _reader(proc: subprocess.Popen[str], lines: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)


def test_sigkill_never_loses_an_acknowledged_turn(tmp_path: Path) -> None:
    db = tmp_path / "mongars.db"
    rng = random.Random(20261121)
    acked: dict[int, str] = {}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    kills_with_acks = 0
    for run in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(db), str(run)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        lines: list[str] = []
        reader = threading.Thread(target=_reader, args=(proc, lines))
        reader.start()
        # Wait for the first ack most of the time, so kills land mid-stream rather than at start.
        deadline = time.monotonic() + 30
        if run % 4 != 3:
            while not lines and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join()
        assert proc.stdout is not None
        proc.stdout.close()
        assert proc.stderr is not None
        errors = proc.stderr.read()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, errors
        for line in lines:
            if not line.endswith("\n"):
                continue  # cut mid-line: the ack was not fully given
            ack = json.loads(line)
            acked.update(zip(ack["ids"], ack["texts"], strict=True))
        kills_with_acks += bool(lines)

        conn = connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            stored = dict(conn.execute("SELECT id, content FROM messages").fetchall())
            missing = [i for i in acked if stored.get(i) != acked[i]]
            assert not missing, f"run {run}: acknowledged turns lost: {missing[:5]}"
            # The full-text index agrees with its table after every crash.
            conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
            vec = conn.execute(
                "SELECT count(*) FROM messages_vec v LEFT JOIN messages m ON m.id = v.item_id"
                " WHERE m.id IS NULL"
            ).fetchone()[0]
            assert vec == 0  # no vector outlives its message
        finally:
            conn.close()
    assert kills_with_acks >= KILLS // 2
    assert len(acked) > 20
