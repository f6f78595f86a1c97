"""Installing a Piper voice from a (local) HTTP server: it then speaks its language."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mongars_edge.errors import InvalidRequestError, NotFoundError
from mongars_edge.speech.catalog import VoiceEntry, installed, pull, remove
from mongars_edge.speech.tts import TextToSpeech
from mongars_edge.speech.voices import default_english_model
from tests.support.env import run_cli


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local stand-in for the voice hub: joe's model, relabelled as a French voice."""
    root = tmp_path / "hub"
    (root / "fr").mkdir(parents=True)
    joe = default_english_model()
    assert joe is not None
    shutil.copy(joe, root / "fr" / "fr_FR-test-medium.onnx")
    config = json.loads(Path(f"{joe}.json").read_text())
    config["espeak"]["voice"] = "fr"
    config["language"] = {"code": "fr_FR"}
    config["dataset"] = "test"
    (root / "fr" / "fr_FR-test-medium.onnx.json").write_text(json.dumps(config))
    (root / "fr" / "broken.onnx.json").write_text("{not json")
    handler = functools.partial(_Quiet, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_pull_installs_a_voice_that_replaces_espeak_for_its_language(
    hub: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = hub
    data = tmp_path / "data"
    digest = hashlib.sha256((root / "fr" / "fr_FR-test-medium.onnx").read_bytes()).hexdigest()
    catalog = {
        "fr_FR-test-medium": VoiceEntry(
            "fr_FR-test-medium", "fr", f"{url}/fr/fr_FR-test-medium.onnx", sha256=digest
        ),
        "unpinned": VoiceEntry("unpinned", "fr", f"{url}/fr/fr_FR-test-medium.onnx"),
        "broken": VoiceEntry("broken", "fr", f"{url}/fr/broken.onnx"),
        "missing": VoiceEntry("missing", "fr", f"{url}/fr/missing.onnx"),
    }
    path = pull("fr_FR-test-medium", data, catalog)
    assert path.is_file() and Path(f"{path}.json").is_file()
    assert installed(data) == ["fr_FR-test-medium"]

    tts = TextToSpeech.load(data / "voices")
    try:
        french = tts.pick(text="Bonjour, comment allez-vous ?")
        assert (french.info.name, french.info.engine) == ("test", "piper")
        assert "espeak-fr" not in {v.name for v in tts.voices()}
        chunks = list(tts.iter_blocking("Bonjour tout le monde."))
        assert chunks[0].voice == "test" and len(chunks[0].pcm) > 10_000
    finally:
        tts._executor.shutdown(wait=True)

    pull("unpinned", data, catalog)  # no digest: recorded on first use
    assert (data / "voices" / "unpinned.onnx.sha256").read_text().strip() == digest
    with pytest.raises(InvalidRequestError, match="not a Piper voice config"):
        pull("broken", data, catalog)
    with pytest.raises(Exception, match="404"):
        pull("missing", data, catalog)
    with pytest.raises(NotFoundError, match="known voices"):
        pull("nope", data, catalog)
    assert sorted(installed(data)) == ["fr_FR-test-medium", "unpinned"]
    remove("unpinned", data)
    assert installed(data) == ["fr_FR-test-medium"]
    with pytest.raises(NotFoundError):
        remove("unpinned", data)


def test_voices_commands(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    listed = run_cli("voices", "list", *data)
    assert listed.returncode == 0, listed.stderr
    assert "fr_FR-siwis-medium" in listed.stdout and "joe" in listed.stdout
    gone = run_cli("voices", "rm", "fr_FR-siwis-medium", *data)
    assert gone.returncode != 0 and "not installed" in gone.stderr
    unknown = run_cli("voices", "pull", "klingon", *data)
    assert unknown.returncode != 0 and "known voices" in unknown.stderr
