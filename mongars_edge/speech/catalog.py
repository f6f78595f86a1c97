"""Piper voices the box can install (like chat models: download, verify, then use).

Files land in `<data dir>/voices/` as `<id>.onnx` + `<id>.onnx.json`; TextToSpeech loads every
voice found there at start, and a Piper voice for a language replaces espeak-ng for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from mongars_edge.datadir import DataDir
from mongars_edge.errors import InvalidRequestError, NotFoundError

if TYPE_CHECKING:
    from mongars_edge.inference.models import Progress

log = logging.getLogger(__name__)

#: Piper medium voices are ~60 MB; anything far larger is not a voice.
MAX_VOICE_BYTES: Final = 300 * 2**20
_HUB: Final = "https://huggingface.co/rhasspy/piper-voices/resolve/v1.0.0"


@dataclass(frozen=True)
class VoiceEntry:
    """One installable voice."""

    id: str
    language: str
    url: str  # of the .onnx; the config is url + ".json"
    sha256: str = ""  # of the .onnx; empty: recorded on first download (see models/catalog.toml)
    notes: str = ""


# The hub files could not be fetched from the build machines, so no digest is pinned: `voices
# pull` records the one it received and warns, as `models pull` does for unpinned models.
CATALOG: Final = {
    e.id: e
    for e in (
        VoiceEntry(
            "fr_FR-siwis-medium",
            "fr",
            f"{_HUB}/fr/fr_FR/siwis/medium/fr_FR-siwis-medium.onnx",
            notes="French (France), female. Replaces espeak-ng for French.",
        ),
        VoiceEntry(
            "fr_FR-tom-medium",
            "fr",
            f"{_HUB}/fr/fr_FR/tom/medium/fr_FR-tom-medium.onnx",
            notes="French (France), male.",
        ),
        VoiceEntry(
            "en_US-lessac-medium",
            "en",
            f"{_HUB}/en/en_US/lessac/medium/en_US-lessac-medium.onnx",
            notes="US English, female (joe ships with the box).",
        ),
    )
}


def voices_dir(data_dir: Path) -> Path:
    return DataDir(data_dir).voices


def installed(data_dir: Path) -> list[str]:
    """Ids of the voices in the data directory."""
    from mongars_edge.speech.voices import installed_models

    return [p.name.removesuffix(".onnx") for p in installed_models(voices_dir(data_dir))]


def pull(
    voice_id: str,
    data_dir: Path,
    catalog: dict[str, VoiceEntry] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Download a catalog voice (model and config), verify it, install it; returns the .onnx."""
    entries = CATALOG if catalog is None else catalog
    entry = entries.get(voice_id)
    if entry is None:
        names = ", ".join(sorted(entries))
        raise NotFoundError(f"no voice {voice_id!r} in the catalog; known voices: {names}")
    folder = voices_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    onnx = folder / f"{entry.id}.onnx"
    config = folder / f"{entry.id}.onnx.json"
    staged = folder / f".{entry.id}.onnx.json.new"
    _download(entry.url + ".json", staged, "", None)
    _check_config(staged)
    digest = _download(entry.url, onnx, entry.sha256, progress)
    staged.replace(config)  # the voice becomes visible only once both files are whole
    if not entry.sha256:
        log.warning(
            "voice %s has no pinned sha256 in the catalog; recorded %s (trust on first use)",
            entry.id,
            digest,
        )
        onnx.with_name(onnx.name + ".sha256").write_text(digest + "\n", encoding="utf-8")
    return onnx


def _download(url: str, dest: Path, sha256: str, progress: Progress | None) -> str:
    """Fetch *url* into *dest* atomically (size-capped, sha256-checked); returns the digest."""
    import httpx

    from mongars_edge.inference.errors import DownloadError

    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    done = 0
    try:
        with (
            httpx.Client(timeout=30.0, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise DownloadError(f"{url} answered HTTP {response.status_code}")
            total = int(response.headers.get("content-length", "0") or 0)
            with part.open("wb") as out:
                for block in response.iter_bytes(1 << 20):
                    done += len(block)
                    if done > MAX_VOICE_BYTES:
                        raise DownloadError(f"{url} is larger than a voice can be")
                    h.update(block)
                    out.write(block)
                    if progress is not None:
                        progress(done, total)
    except httpx.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"download of {url} failed ({type(exc).__name__}: {exc})") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    digest = h.hexdigest()
    if sha256 and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: sha256 {digest} is not the catalog's {sha256}; not kept")
    part.replace(dest)
    return digest


def remove(voice_id: str, data_dir: Path) -> None:
    folder = voices_dir(data_dir)
    paths = [folder / f"{voice_id}{suffix}" for suffix in (".onnx", ".onnx.json", ".onnx.sha256")]
    if "/" in voice_id or not paths[0].is_file():
        raise NotFoundError(f"voice {voice_id!r} is not installed (see `voices list`)")
    for path in paths:
        path.unlink(missing_ok=True)


def _check_config(path: Path) -> None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(config, dict) and "phoneme_id_map" in config and "audio" in config
    except (OSError, ValueError):
        ok = False
    if not ok:
        path.unlink(missing_ok=True)
        raise InvalidRequestError(f"{path.name} is not a Piper voice config")
