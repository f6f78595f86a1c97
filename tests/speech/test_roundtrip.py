"""The issue's acceptance check: say -> WAV -> listen gives back the words (WER <= 0.1)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.env import run_cli
from tests.support.speech import SENTENCES, wer


def test_say_then_listen_on_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "ten.wav"
    text = " ".join(SENTENCES)
    data = ["--data-dir", str(tmp_path / "data")]
    said = run_cli("say", text, "-o", str(out), *data)
    assert said.returncode == 0, said.stderr
    assert out.stat().st_size > 44
    heard = run_cli("listen", str(out), "--json", *data)
    assert heard.returncode == 0, heard.stderr
    result = json.loads(heard.stdout)
    error = wer(text, result["text"])
    print(f"CLI round trip WER over {len(SENTENCES)} sentences: {error:.3f}")
    assert error <= 0.1, result["text"]
    assert result["language"] == "en"


def test_cli_errors_are_one_clear_line(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    empty = run_cli("say", "  ", "-o", str(tmp_path / "x.wav"), *data)
    assert empty.returncode != 0
    assert "empty" in empty.stderr and "Traceback" not in empty.stderr
    assert not (tmp_path / "x.wav").exists()
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEnot really")
    heard = run_cli("listen", str(bad), *data)
    assert heard.returncode != 0
    assert "cannot decode" in heard.stderr and "Traceback" not in heard.stderr
    missing = run_cli("listen", str(tmp_path / "nope.wav"), *data)
    assert missing.returncode != 0 and "cannot read" in missing.stderr
